package io.firecracer.petclinic.system;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.function.Function;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.springframework.beans.BeanWrapper;
import org.springframework.beans.PropertyAccessorFactory;

/**
 * A Mustache-like template (the "small template step" standing in for PetClinic's Thymeleaf):
 * {@code {{name}}} (HTML-escaped), {@code {{{name}}}} (raw), {@code {{#x}}..{{/x}}} sections over
 * collections or truthy values, {@code {{^x}}..{{/x}}} inverted sections, {@code {{>partial}}}.
 * Dotted names walk JavaBean properties through Spring's {@link BeanWrapper} (its cached introspection,
 * as Thymeleaf's SpEL would) and map keys. Parsed once, rendered per request.
 */
public final class Template {
    private static final Pattern TAG = Pattern.compile("\\{\\{(\\{?)([#^/>]?)\\s*([\\w.]+)\\s*\\}?\\}\\}");

    private sealed interface Node permits Text, Var, Section, Partial {}

    private record Text(String text) implements Node {}

    private record Var(String name, boolean raw) implements Node {}

    private record Section(String name, boolean inverted, List<Node> body) implements Node {}

    private record Partial(String name) implements Node {}

    private final List<Node> nodes;

    private Template(List<Node> nodes) { this.nodes = nodes; }

    /** Parses template source; {@code IllegalArgumentException} on unbalanced sections. */
    public static Template parse(String src) {
        List<List<Node>> stack = new ArrayList<>();
        List<String> open = new ArrayList<>();
        List<Boolean> inverted = new ArrayList<>();
        stack.add(new ArrayList<>());
        Matcher m = TAG.matcher(src);
        int pos = 0;
        while (m.find()) {
            if (m.start() > pos) stack.get(stack.size() - 1).add(new Text(src.substring(pos, m.start())));
            pos = m.end();
            String kind = m.group(2);
            String name = m.group(3);
            switch (kind) {
                case "#", "^" -> {
                    open.add(name);
                    inverted.add(kind.equals("^"));
                    stack.add(new ArrayList<>());
                }
                case "/" -> {
                    if (open.isEmpty() || !open.get(open.size() - 1).equals(name)) {
                        throw new IllegalArgumentException("unbalanced section " + name);
                    }
                    List<Node> body = stack.remove(stack.size() - 1);
                    open.remove(open.size() - 1);
                    boolean inv = inverted.remove(inverted.size() - 1);
                    stack.get(stack.size() - 1).add(new Section(name, inv, body));
                }
                case ">" -> stack.get(stack.size() - 1).add(new Partial(name));
                default -> stack.get(stack.size() - 1).add(new Var(name, !m.group(1).isEmpty()));
            }
        }
        if (!open.isEmpty()) throw new IllegalArgumentException("unclosed section " + open);
        if (pos < src.length()) stack.get(0).add(new Text(src.substring(pos)));
        return new Template(stack.get(0));
    }

    /** Renders with {@code model} as the outermost scope; partials come from {@code partials}. */
    public void render(Object model, Function<String, Template> partials, StringBuilder out) {
        List<Object> scopes = new ArrayList<>();
        scopes.add(model);
        render(nodes, scopes, partials, out);
    }

    private static void render(List<Node> nodes, List<Object> scopes, Function<String, Template> partials,
                               StringBuilder sb) {
        for (Node n : nodes) {
            if (n instanceof Text t) {
                sb.append(t.text());
            } else if (n instanceof Var v) {
                Object val = lookup(scopes, v.name());
                String s = val == null ? "" : val.toString();
                sb.append(v.raw() ? s : escape(s));
            } else if (n instanceof Partial p) {
                render(partials.apply(p.name()).nodes, scopes, partials, sb);
            } else if (n instanceof Section s) {
                Object val = lookup(scopes, s.name());
                boolean empty = val == null || Boolean.FALSE.equals(val)
                    || (val instanceof Collection<?> c && c.isEmpty());
                if (s.inverted()) {
                    if (empty) render(s.body(), scopes, partials, sb);
                } else if (!empty) {
                    Collection<?> items = val instanceof Collection<?> c ? c : List.of(val);
                    for (Object item : items) {
                        scopes.add(item);
                        render(s.body(), scopes, partials, sb);
                        scopes.remove(scopes.size() - 1);
                    }
                }
            }
        }
    }

    private static Object lookup(List<Object> scopes, String dotted) {
        String[] parts = dotted.split("\\.");
        for (int i = scopes.size() - 1; i >= 0; i--) {
            Object v = property(scopes.get(i), parts[0]);
            if (v != null) {
                for (int k = 1; k < parts.length && v != null; k++) v = property(v, parts[k]);
                return v;
            }
        }
        return null;
    }

    private static Object property(Object obj, String name) {
        if (obj == null) return null;
        if (name.equals("this")) return obj;
        if (obj instanceof Map<?, ?> m) return m.get(name);
        if (obj instanceof String || obj instanceof Number || obj instanceof Boolean) return null;
        BeanWrapper bw = PropertyAccessorFactory.forBeanPropertyAccess(obj);
        return bw.isReadableProperty(name) ? bw.getPropertyValue(name) : null;
    }

    /** HTML escaping of text and attribute values. */
    public static String escape(String s) {
        StringBuilder sb = new StringBuilder(s.length() + 16);
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '<' -> sb.append("&lt;");
                case '>' -> sb.append("&gt;");
                case '&' -> sb.append("&amp;");
                case '"' -> sb.append("&quot;");
                case '\'' -> sb.append("&#39;");
                default -> sb.append(c);
            }
        }
        return sb.toString();
    }
}

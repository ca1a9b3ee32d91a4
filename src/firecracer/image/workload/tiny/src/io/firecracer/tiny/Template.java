package io.firecracer.tiny;

import java.io.IOException;
import java.io.InputStream;
import java.lang.reflect.RecordComponent;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A Mustache-like template engine (like Thymeleaf in Petclinic, at small scale): {{name}} (HTML-escaped),
 * {{{name}}} (raw), {{#list}}..{{/list}} sections over collections or truthy values, {{^x}}..{{/x}}
 * inverted sections, {{>partial}}. Templates are parsed once from the JAR and rendered per request.
 */
final class Template {
    private static final Pattern TAG = Pattern.compile("\\{\\{(\\{?)([#^/>]?)\\s*([\\w.]+)\\s*\\}?\\}\\}");
    private static final Map<String, Template> CACHE = new ConcurrentHashMap<>();

    private sealed interface Node permits Text, Var, Section, Partial {}

    private record Text(String text) implements Node {}

    private record Var(String name, boolean raw) implements Node {}

    private record Section(String name, boolean inverted, List<Node> body) implements Node {}

    private record Partial(String name) implements Node {}

    private final List<Node> nodes;

    private Template(List<Node> nodes) { this.nodes = nodes; }

    static Template load(String name) {
        return CACHE.computeIfAbsent(name, n -> {
            try (InputStream in = Template.class.getResourceAsStream("/templates/" + n + ".html")) {
                if (in == null) throw new IllegalArgumentException("no template " + n);
                return parse(new String(in.readAllBytes(), StandardCharsets.UTF_8));
            } catch (IOException e) {
                throw new IllegalStateException(e);
            }
        });
    }

    static Template parse(String src) {
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

    String render(Object model) {
        StringBuilder sb = new StringBuilder(4096);
        List<Object> scopes = new ArrayList<>();
        scopes.add(model);
        render(nodes, scopes, sb);
        return sb.toString();
    }

    private static void render(List<Node> nodes, List<Object> scopes, StringBuilder sb) {
        for (Node n : nodes) {
            if (n instanceof Text t) {
                sb.append(t.text());
            } else if (n instanceof Var v) {
                Object val = lookup(scopes, v.name());
                String s = val == null ? "" : val.toString();
                sb.append(v.raw() ? s : escape(s));
            } else if (n instanceof Partial p) {
                load(p.name()).renderInto(scopes, sb);
            } else if (n instanceof Section s) {
                Object val = lookup(scopes, s.name());
                boolean empty = val == null || Boolean.FALSE.equals(val)
                    || (val instanceof Collection<?> c && c.isEmpty());
                if (s.inverted()) {
                    if (empty) render(s.body(), scopes, sb);
                } else if (!empty) {
                    Collection<?> items = val instanceof Collection<?> c ? c : List.of(val);
                    for (Object item : items) {
                        scopes.add(item);
                        render(s.body(), scopes, sb);
                        scopes.remove(scopes.size() - 1);
                    }
                }
            }
        }
    }

    private void renderInto(List<Object> scopes, StringBuilder sb) { render(nodes, scopes, sb); }

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
        Class<?> c = obj.getClass();
        if (c.isRecord()) {
            for (RecordComponent rc : c.getRecordComponents()) {
                if (rc.getName().equals(name)) return invoke(rc.getAccessor(), obj);
            }
        }
        try {
            return invoke(c.getDeclaredMethod(name), obj);
        } catch (NoSuchMethodException e) {
            return null;
        }
    }

    private static Object invoke(java.lang.reflect.Method m, Object obj) {
        try {
            m.setAccessible(true);
            return m.invoke(obj);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException(e);
        }
    }

    static String escape(String s) {
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

package io.firecracer.petclinic.system;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;
import org.springframework.core.io.Resource;
import org.springframework.core.io.ResourceLoader;
import org.springframework.web.servlet.View;
import org.springframework.web.servlet.ViewResolver;
import org.springframework.web.servlet.view.RedirectView;

/**
 * Resolves view names to templates in {@code classpath:templates/NAME.html} (parsed once, cached), and
 * {@code redirect:URL} to Spring's {@link RedirectView} (URI template variables expanded, as in
 * {@code redirect:/owners/{ownerId}}).
 */
public class TemplateViewResolver implements ViewResolver {
    private final ResourceLoader loader;
    private final Map<String, Template> templates = new ConcurrentHashMap<>();

    public TemplateViewResolver(ResourceLoader loader) { this.loader = loader; }

    @Override
    public View resolveViewName(String viewName, Locale locale) {
        if (viewName.startsWith("redirect:")) {
            RedirectView rv = new RedirectView(viewName.substring("redirect:".length()), true);
            rv.setExposeModelAttributes(false);
            return rv;
        }
        Template t = template(viewName);
        return new View() {
            @Override
            public String getContentType() { return "text/html;charset=UTF-8"; }

            @Override
            public void render(Map<String, ?> model, HttpServletRequest request, HttpServletResponse response)
                    throws IOException {
                StringBuilder sb = new StringBuilder(8192);
                t.render(model, TemplateViewResolver.this::template, sb);
                byte[] body = sb.toString().getBytes(StandardCharsets.UTF_8);
                response.setContentType(getContentType());
                response.setContentLength(body.length);
                response.getOutputStream().write(body);
            }
        };
    }

    /** The parsed template {@code name}; {@code IllegalArgumentException} if there is none. */
    public Template template(String name) {
        return templates.computeIfAbsent(name, n -> {
            Resource r = loader.getResource("classpath:templates/" + n + ".html");
            if (!r.exists()) throw new IllegalArgumentException("no template " + n);
            try (InputStream in = r.getInputStream()) {
                return Template.parse(new String(in.readAllBytes(), StandardCharsets.UTF_8));
            } catch (IOException e) {
                throw new IllegalStateException("template " + n + ": " + e, e);
            }
        });
    }
}

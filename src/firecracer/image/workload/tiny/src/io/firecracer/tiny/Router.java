package io.firecracer.tiny;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpHandler;
import java.io.IOException;
import java.io.OutputStream;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** Dispatches requests to handlers by method and path pattern ({id} segments), maps errors to statuses. */
final class Router implements HttpHandler {
    record Request(String method, String path, Map<String, String> params, Map<String, String> query,
                   String body) {
        int intParam(String name) {
            try {
                return Integer.parseInt(params.get(name));
            } catch (NumberFormatException e) {
                throw new Json.BadRequest(name + " must be an integer");
            }
        }
    }

    record Response(int status, String contentType, String body) {
        static Response html(String body) { return new Response(200, "text/html; charset=utf-8", body); }

        static Response json(Object value) {
            return new Response(200, "application/json", Json.write(value));
        }

        static Response json(int status, Object value) {
            return new Response(status, "application/json", Json.write(value));
        }
    }

    @FunctionalInterface
    interface Handler {
        Response handle(Request r) throws Exception;
    }

    private record Route(String method, Pattern pattern, List<String> names, Handler handler) {}

    private static final Pattern PARAM = Pattern.compile("\\{(\\w+)}");
    private final List<Route> routes = new ArrayList<>();
    private final boolean log;
    private final AtomicBoolean first = new AtomicBoolean(true);
    private final AtomicLong served = new AtomicLong();

    Router(boolean log) { this.log = log; }

    Router route(String method, String template, Handler h) {
        List<String> names = new ArrayList<>();
        Matcher m = PARAM.matcher(template);
        StringBuilder re = new StringBuilder();
        int pos = 0;
        while (m.find()) {
            re.append(Pattern.quote(template.substring(pos, m.start()))).append("([^/]+)");
            names.add(m.group(1));
            pos = m.end();
        }
        re.append(Pattern.quote(template.substring(pos)));
        routes.add(new Route(method, Pattern.compile(re.toString()), names, h));
        return this;
    }

    long served() { return served.get(); }

    @Override
    public void handle(HttpExchange ex) throws IOException {
        long t0 = System.nanoTime();
        String method = ex.getRequestMethod();
        String path = ex.getRequestURI().getPath();
        Response resp;
        try {
            resp = dispatch(ex, method, path);
        } catch (Store.NotFound e) {
            resp = Response.json(404, Map.of("error", e.getMessage()));
        } catch (Json.BadRequest e) {
            resp = Response.json(400, Map.of("error", e.getMessage()));
        } catch (Exception e) {
            resp = Response.json(500, Map.of("error", String.valueOf(e)));
        }
        byte[] bytes = resp.body().getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", resp.contentType());
        ex.sendResponseHeaders(resp.status(), bytes.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(bytes);
        }
        served.incrementAndGet();
        double ms = (System.nanoTime() - t0) / 1e6;
        if (first.compareAndSet(true, false)) {
            System.out.printf("petclinic: first response status=%d uptime_ms=%d%n", resp.status(), uptimeMs());
        }
        if (log) System.out.printf("petclinic: %s %s %d %.1fms%n", method, path, resp.status(), ms);
    }

    private Response dispatch(HttpExchange ex, String method, String path) throws Exception {
        boolean pathMatched = false;
        for (Route r : routes) {
            Matcher m = r.pattern().matcher(path);
            if (!m.matches()) continue;
            pathMatched = true;
            if (!r.method().equals(method)) continue;
            Map<String, String> params = new HashMap<>();
            for (int i = 0; i < r.names().size(); i++) params.put(r.names().get(i), m.group(i + 1));
            String body = new String(ex.getRequestBody().readAllBytes(), StandardCharsets.UTF_8);
            return r.handler().handle(new Request(method, path, params, query(ex.getRequestURI().getRawQuery()),
                body));
        }
        if (pathMatched) return Response.json(405, Map.of("error", method + " not allowed on " + path));
        return Response.json(404, Map.of("error", "no route for " + path));
    }

    private static Map<String, String> query(String raw) {
        Map<String, String> q = new HashMap<>();
        if (raw == null || raw.isEmpty()) return q;
        for (String kv : raw.split("&")) {
            int eq = kv.indexOf('=');
            String k = URLDecoder.decode(eq < 0 ? kv : kv.substring(0, eq), StandardCharsets.UTF_8);
            String v = eq < 0 ? "" : URLDecoder.decode(kv.substring(eq + 1), StandardCharsets.UTF_8);
            q.put(k, v);
        }
        return q;
    }

    /** Milliseconds since the (guest) kernel booted, from /proc/uptime; -1 where there is none. */
    static long uptimeMs() {
        try {
            String s = java.nio.file.Files.readString(java.nio.file.Path.of("/proc/uptime"));
            return (long) (Double.parseDouble(s.split(" ")[0]) * 1000);
        } catch (IOException | RuntimeException e) {
            return -1;
        }
    }
}

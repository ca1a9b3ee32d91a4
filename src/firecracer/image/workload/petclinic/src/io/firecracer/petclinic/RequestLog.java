package io.firecracer.petclinic;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import javax.servlet.Filter;
import javax.servlet.FilterChain;
import javax.servlet.FilterConfig;
import javax.servlet.ServletException;
import javax.servlet.ServletRequest;
import javax.servlet.ServletResponse;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;

/**
 * Logs each request ({@code petclinic: GET /owners/1 200 3.1ms}, unless quiet) and, once, the line the
 * tools wait for after a boot or a restore: {@code petclinic: first response status=N uptime_ms=N}, printed
 * after the response has been flushed to the client (guest uptime from /proc/uptime).
 */
public final class RequestLog implements Filter {
    private final boolean log;
    private final AtomicBoolean first = new AtomicBoolean(true);
    private final AtomicLong served = new AtomicLong();

    public RequestLog(boolean log) { this.log = log; }

    public long served() { return served.get(); }

    @Override
    public void init(FilterConfig config) {}

    @Override
    public void doFilter(ServletRequest req, ServletResponse resp, FilterChain chain)
            throws IOException, ServletException {
        long t0 = System.nanoTime();
        HttpServletRequest request = (HttpServletRequest) req;
        HttpServletResponse response = (HttpServletResponse) resp;
        try {
            chain.doFilter(req, resp);
            response.flushBuffer();
        } finally {
            served.incrementAndGet();
            int status = response.getStatus();
            if (first.compareAndSet(true, false)) {
                System.out.printf("petclinic: first response status=%d uptime_ms=%d%n", status, uptimeMs());
            }
            if (log) {
                String q = request.getQueryString();
                System.out.printf("petclinic: %s %s%s %d %.1fms%n", request.getMethod(), request.getRequestURI(),
                    q == null ? "" : "?" + q, status, (System.nanoTime() - t0) / 1e6);
            }
        }
    }

    @Override
    public void destroy() {}

    /** Milliseconds since the (guest) kernel booted, from /proc/uptime; -1 where there is none. */
    static long uptimeMs() {
        try {
            String s = Files.readString(Path.of("/proc/uptime"));
            return (long) (Double.parseDouble(s.split(" ")[0]) * 1000);
        } catch (IOException | RuntimeException e) {
            return -1;
        }
    }
}

package io.firecracer.petclinic;

import java.util.EnumSet;
import java.util.HashMap;
import java.util.Map;
import java.util.logging.Level;
import java.util.logging.Logger;
import javax.servlet.DispatcherType;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.FilterHolder;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;
import org.eclipse.jetty.util.thread.QueuedThreadPool;
import org.springframework.core.env.MapPropertySource;
import org.springframework.web.context.support.AnnotationConfigWebApplicationContext;
import org.springframework.web.servlet.DispatcherServlet;

/**
 * Spring PetClinic, classic (pre-Boot) style, on Debian's Spring 4.3, Jetty 9.4, H2 and Jackson: an
 * annotation-scanned application context, Spring MVC controllers with template views and JSON, Spring JDBC
 * repositories over in-memory H2, a transactional service, embedded Jetty.
 *
 * <p>Options: --port N (8080), --host ADDR (0.0.0.0), --owners N (2000; the original's 10 plus generated
 * ones), --threads N (Jetty's maximum, 16), --no-log (no per-request line), --train ROUNDS (serve on an
 * ephemeral loopback port, walk every page and endpoint ROUNDS times, exit: the image build's AppCDS
 * training run). Prints {@code petclinic: ready port=N owners=N startup_ms=N uptime_ms=N} once Jetty
 * accepts connections, and {@code petclinic: first response ...} after the first response.
 */
public final class PetClinicApplication {
    private PetClinicApplication() {}

    /** A started PetClinic: Jetty, the Spring context and the request log. */
    public record Running(Server server, AnnotationConfigWebApplicationContext context, RequestLog log, int port) {
        public void stop() throws Exception {
            server.stop();
            context.close();
        }
    }

    public static void main(String[] args) throws Exception {
        long t0 = System.nanoTime();
        int port = 8080;
        String host = "0.0.0.0";
        int owners = 2000;
        int threads = 16;
        boolean log = true;
        int train = 0;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--port" -> port = Integer.parseInt(args[++i]);
                case "--host" -> host = args[++i];
                case "--owners" -> owners = Integer.parseInt(args[++i]);
                case "--threads" -> threads = Integer.parseInt(args[++i]);
                case "--no-log" -> log = false;
                case "--train" -> train = Integer.parseInt(args[++i]);
                default -> {
                    System.err.println("petclinic: unknown option " + args[i]);
                    System.exit(2);
                }
            }
        }
        if (owners < 1 || threads < 4) {
            System.err.println("petclinic: --owners must be >= 1 and --threads >= 4");
            System.exit(2);
        }
        if (train > 0) {
            host = "127.0.0.1";
            port = 0;
            log = false;
        }
        quietLogging();
        Running app;
        try {
            app = start(host, port, owners, threads, log);
        } catch (Exception e) {
            System.err.println("petclinic: failed to start: " + e);
            e.printStackTrace();
            System.exit(1);
            return;
        }
        System.out.printf("petclinic: ready port=%d owners=%d startup_ms=%d uptime_ms=%d%n", app.port(), owners,
            (System.nanoTime() - t0) / 1_000_000, RequestLog.uptimeMs());
        if (train > 0) {
            int requests = Training.walk(app.port(), train);
            app.stop();
            System.out.printf("petclinic: training done, %d requests%n", requests);
            System.exit(0);
        }
        app.server().join();
    }

    /** Builds the Spring context inside a DispatcherServlet on Jetty and starts it (context refresh included). */
    public static Running start(String host, int port, int owners, int threads, boolean log) throws Exception {
        AnnotationConfigWebApplicationContext ctx = new AnnotationConfigWebApplicationContext();
        Map<String, Object> props = new HashMap<>();
        props.put("petclinic.owners", owners);
        ctx.getEnvironment().getPropertySources().addFirst(new MapPropertySource("petclinic", props));
        ctx.scan("io.firecracer.petclinic");

        QueuedThreadPool pool = new QueuedThreadPool(threads, 2);
        pool.setName("jetty");
        Server server = new Server(pool);
        ServerConnector http = new ServerConnector(server, 1, 1);
        http.setHost(host);
        http.setPort(port);
        server.addConnector(http);
        ServletContextHandler handler = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
        handler.setContextPath("/");
        RequestLog requests = new RequestLog(log);
        handler.addFilter(new FilterHolder(requests), "/*", EnumSet.of(DispatcherType.REQUEST));
        DispatcherServlet dispatcher = new DispatcherServlet(ctx);
        dispatcher.setThrowExceptionIfNoHandlerFound(false);
        ServletHolder holder = new ServletHolder("petclinic", dispatcher);
        holder.setInitOrder(0);  // refresh the context when Jetty starts, not on the first request
        handler.addServlet(holder, "/");
        server.setHandler(handler);
        server.setStopAtShutdown(true);
        try {
            server.start();
        } catch (Exception e) {
            server.stop();
            throw e;
        }
        if (!ctx.isActive()) {
            server.stop();
            throw new IllegalStateException("the Spring context did not start (see the log above)");
        }
        return new Running(server, ctx, requests, http.getLocalPort());
    }

    private static final Logger ROOT_LOGGER = Logger.getLogger("");
    private static final Logger MVC_LOGGER = Logger.getLogger("org.springframework.web.servlet");

    /**
     * Spring (commons-logging → JUL) and Jetty (StdErrLog) log at INFO: keep the console to warnings, and
     * Spring MVC's warnings about client errors (404, 400, 405: the request log shows them) off.
     */
    private static void quietLogging() {
        MVC_LOGGER.setLevel(Level.SEVERE);
        System.setProperty("org.eclipse.jetty.util.log.class", "org.eclipse.jetty.util.log.StdErrLog");
        System.setProperty("org.eclipse.jetty.util.log.announce", "false");
        System.setProperty("org.eclipse.jetty.LEVEL", "WARN");
        ROOT_LOGGER.setLevel(Level.WARNING);
    }
}

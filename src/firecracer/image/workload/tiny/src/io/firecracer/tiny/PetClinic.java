package io.firecracer.tiny;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * A Petclinic-like service on the JDK's own HTTP server (no Maven Central, no framework).
 *
 * <p>Options: --port N (8080), --host ADDR (0.0.0.0), --owners N (2000 seeded owners), --threads N (4),
 * --no-log (no per-request line), --train ROUNDS (serve on an ephemeral loopback port, request every
 * endpoint ROUNDS times, exit: the AppCDS training run of the image build).
 */
public final class PetClinic {
    private PetClinic() {}

    public static void main(String[] args) throws Exception {
        long t0 = System.nanoTime();
        int port = 8080;
        String host = "0.0.0.0";
        int owners = 2000;
        int threads = 4;
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
        if (train > 0) {
            host = "127.0.0.1";
            port = 0;
            log = false;
        }
        Store store = new Store(owners, 42L);
        Router router = new Clinic(store).routes(new Router(log));
        HttpServer server = HttpServer.create(new InetSocketAddress(host, port), 64);
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        server.setExecutor(pool);
        server.createContext("/", router);
        server.start();
        int bound = server.getAddress().getPort();
        System.out.printf("petclinic: ready port=%d owners=%d startup_ms=%d uptime_ms=%d%n", bound, owners,
            (System.nanoTime() - t0) / 1_000_000, Router.uptimeMs());
        if (train > 0) {
            train(bound, train);
            server.stop(0);
            pool.shutdown();
            System.out.printf("petclinic: training done, %d requests%n", router.served());
            System.exit(0);
        }
    }

    /**
     * Requests every page and API once per round, so the classes and code of every path get loaded; any
     * unexpected status fails the run (exit 1), which makes the image build fail.
     */
    private static void train(int port, int rounds) throws IOException {
        Map<String, Integer> gets = new LinkedHashMap<>();
        for (String p : List.of("/", "/health", "/owners", "/owners?lastName=Da", "/owners/1", "/vets",
            "/api/owners", "/api/owners?lastName=Fr", "/api/owners/2", "/api/pets/1/visits", "/api/vets",
            "/api/pettypes", "/api/stats")) {
            gets.put(p, 200);
        }
        gets.put("/nope", 404);
        gets.put("/api/owners/999999", 404);
        gets.put("/owners/x", 400);
        for (int r = 0; r < rounds; r++) {
            for (Map.Entry<String, Integer> e : gets.entrySet()) {
                expect(e.getValue(), request(port, "GET", e.getKey(), null), "GET " + e.getKey());
            }
            expect(201, request(port, "POST", "/api/owners", "{\"firstName\":\"Ada\",\"lastName\":\"Lovelace\","
                + "\"address\":\"12 Analytical St.\",\"city\":\"London\",\"telephone\":\"0123456789\"}"),
                "POST /api/owners");
            expect(201, request(port, "POST", "/api/owners/1/pets", "{\"name\":\"Babbage\","
                + "\"birthDate\":\"2020-02-02\",\"type\":\"cat\"}"), "POST /api/owners/1/pets");
            expect(201, request(port, "POST", "/api/pets/1/visits", "{\"description\":\"checkup\"}"),
                "POST /api/pets/1/visits");
            expect(400, request(port, "POST", "/api/owners", "{\"firstName\":1}"), "POST /api/owners (bad)");
            expect(405, request(port, "DELETE", "/api/vets", null), "DELETE /api/vets");
        }
    }

    private static void expect(int want, int got, String what) {
        if (want != got) {
            System.err.printf("petclinic: training: %s answered %d, expected %d%n", what, got, want);
            System.exit(1);
        }
    }

    private static int request(int port, String method, String path, String body) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL("http://127.0.0.1:" + port + path).openConnection();
        c.setRequestMethod(method);
        if (body != null) {
            c.setDoOutput(true);
            c.setRequestProperty("Content-Type", "application/json");
            try (OutputStream os = c.getOutputStream()) {
                os.write(body.getBytes(StandardCharsets.UTF_8));
            }
        }
        int status = c.getResponseCode();
        try (InputStream in = status < 400 ? c.getInputStream() : c.getErrorStream()) {
            if (in != null) in.readAllBytes();
        }
        return status;
    }
}

package io.firecracer.petclinic;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The warm-up of the AppCDS training run (and a smoke test of every path): each round requests every page
 * and JSON endpoint, the write paths (JSON and the HTML form with its redirect) and the error statuses.
 * Any unexpected status ends the JVM with exit 1, which fails the image build.
 */
final class Training {
    private Training() {}

    static final Map<String, Integer> GETS = new LinkedHashMap<>();

    static {
        for (String p : List.of("/", "/health", "/owners/find", "/owners", "/owners?lastName=Da",
            "/owners?lastName=&page=2", "/owners/1", "/owners/6", "/owners/6/pets/7/visits/new", "/vets",
            "/api/owners", "/api/owners?lastName=Fr&page=2&size=5", "/api/owners/2", "/api/pets/7", "/api/pets/1/visits", "/api/vets",
            "/api/pettypes", "/api/stats")) {
            GETS.put(p, 200);
        }
        GETS.put("/nope", 404);
        GETS.put("/api/owners/999999", 404);
        GETS.put("/owners/x", 400);
        GETS.put("/api/owners?size=0", 400);
    }

    /** Walks everything {@code rounds} times; returns the number of requests. */
    static int walk(int port, int rounds) throws IOException {
        int n = 0;
        for (int r = 0; r < rounds; r++) {
            for (Map.Entry<String, Integer> e : GETS.entrySet()) {
                expect(e.getValue(), request(port, "GET", e.getKey(), null, null), "GET " + e.getKey());
                n++;
            }
            String json = "application/json";
            expect(201, request(port, "POST", "/api/owners", "{\"firstName\":\"Ada\",\"lastName\":\"Lovelace\","
                + "\"address\":\"12 Analytical St.\",\"city\":\"London\",\"telephone\":\"0123456789\"}", json),
                "POST /api/owners");
            expect(201, request(port, "POST", "/api/owners/1/pets", "{\"name\":\"Babbage\","
                + "\"birthDate\":\"2020-02-02\",\"type\":\"cat\"}", json), "POST /api/owners/1/pets");
            expect(201, request(port, "POST", "/api/pets/1/visits", "{\"description\":\"checkup\"}", json),
                "POST /api/pets/1/visits");
            expect(302, request(port, "POST", "/owners/6/pets/7/visits/new", "date=2024-05-06&description=teeth",
                "application/x-www-form-urlencoded"), "POST /owners/6/pets/7/visits/new");
            expect(200, request(port, "POST", "/owners/6/pets/7/visits/new", "date=2024-05-06&description=",
                "application/x-www-form-urlencoded"), "POST /owners/6/pets/7/visits/new (invalid form)");
            expect(400, request(port, "POST", "/api/owners", "{\"firstName\":1}", json), "POST /api/owners (bad)");
            expect(400, request(port, "POST", "/api/pets/1/visits", "{\"description\":\"" + "x".repeat(300) + "\"}",
                json), "POST /api/pets/1/visits (too long: rolled back)");
            expect(405, request(port, "DELETE", "/api/vets", null, null), "DELETE /api/vets");
            n += 8;
        }
        return n;
    }

    private static void expect(int want, int got, String what) {
        if (want != got) {
            System.err.printf("petclinic: training: %s answered %d, expected %d%n", what, got, want);
            System.exit(1);
        }
    }

    static int request(int port, String method, String path, String body, String type) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL("http://127.0.0.1:" + port + path).openConnection();
        c.setRequestMethod(method);
        c.setInstanceFollowRedirects(false);
        if (body != null) {
            c.setDoOutput(true);
            c.setRequestProperty("Content-Type", type);
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

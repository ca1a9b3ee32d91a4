package io.firecracer.tiny;

import io.firecracer.tiny.Model.Owner;
import io.firecracer.tiny.Model.Pet;
import io.firecracer.tiny.Model.Visit;
import io.firecracer.tiny.Router.Request;
import io.firecracer.tiny.Router.Response;
import java.time.LocalDate;
import java.time.format.DateTimeParseException;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/** The controllers: HTML pages (rendered per request) and the JSON REST API, like Petclinic's. */
final class Clinic {
    private final Store store;

    Clinic(Store store) { this.store = store; }

    Router routes(Router r) {
        return r.route("GET", "/", this::welcome)
            .route("GET", "/health", q -> new Response(200, "text/plain", "UP"))
            .route("GET", "/owners", this::ownersPage)
            .route("GET", "/owners/{id}", this::ownerPage)
            .route("GET", "/vets", this::vetsPage)
            .route("GET", "/api/owners", q -> Response.json(store.findOwners(q.query().get("lastName"))))
            .route("POST", "/api/owners", this::createOwner)
            .route("GET", "/api/owners/{id}", q -> Response.json(owner(q.intParam("id"))))
            .route("POST", "/api/owners/{id}/pets", this::createPet)
            .route("GET", "/api/pets/{id}/visits", q -> Response.json(pet(q.intParam("id")).visits()))
            .route("POST", "/api/pets/{id}/visits", this::createVisit)
            .route("GET", "/api/vets", q -> Response.json(store.vets()))
            .route("GET", "/api/pettypes", q -> Response.json(store.petTypes()))
            .route("GET", "/api/stats", q -> Response.json(store.stats()));
    }

    private Owner owner(int id) { return store.owner(id).orElseThrow(() -> new Store.NotFound("owner " + id)); }

    private Pet pet(int id) { return store.pet(id).orElseThrow(() -> new Store.NotFound("pet " + id)); }

    private Response welcome(Request q) {
        return Response.html(Template.load("welcome").render(Map.of("title", "Welcome", "stats", store.stats())));
    }

    private Response ownersPage(Request q) {
        String last = q.query().getOrDefault("lastName", "");
        List<Owner> found = store.findOwners(last);
        List<Owner> page = found.subList(0, Math.min(found.size(), 50));
        Map<String, Object> model = new LinkedHashMap<>();
        model.put("title", "Owners");
        model.put("owners", page);
        model.put("lastName", last);
        model.put("count", found.size());
        return Response.html(Template.load("owners").render(model));
    }

    private Response ownerPage(Request q) {
        Owner o = owner(q.intParam("id"));
        return Response.html(Template.load("owner").render(Map.of("title", o.fullName(), "owner", o)));
    }

    private Response vetsPage(Request q) {
        return Response.html(Template.load("vets").render(Map.of("title", "Veterinarians", "vets", store.vets())));
    }

    private Response createOwner(Request q) {
        Map<String, Object> b = Json.parseObject(q.body());
        Owner o = store.addOwner(required(b, "firstName"), required(b, "lastName"), required(b, "address"),
            required(b, "city"), required(b, "telephone"));
        return Response.json(201, o);
    }

    private Response createPet(Request q) {
        Map<String, Object> b = Json.parseObject(q.body());
        String typeName = required(b, "type");
        Pet p = store.addPet(q.intParam("id"), required(b, "name"), date(required(b, "birthDate")),
            store.petType(typeName).orElseThrow(() -> new Json.BadRequest("unknown pet type " + typeName)));
        return Response.json(201, p);
    }

    private Response createVisit(Request q) {
        Map<String, Object> b = Json.parseObject(q.body());
        Visit v = store.addVisit(q.intParam("id"), date(Objects.toString(b.getOrDefault("date",
            LocalDate.now().toString()))), required(b, "description"));
        return Response.json(201, v);
    }

    private static String required(Map<String, Object> body, String key) {
        Object v = body.get(key);
        if (!(v instanceof String s) || s.isBlank()) throw new Json.BadRequest("field '" + key + "' is required");
        return s;
    }

    private static LocalDate date(String s) {
        try {
            return LocalDate.parse(s);
        } catch (DateTimeParseException e) {
            throw new Json.BadRequest("bad date " + s);
        }
    }
}

package io.firecracer.tiny;

import io.firecracer.tiny.Model.Owner;
import io.firecracer.tiny.Model.Pet;
import io.firecracer.tiny.Model.PetType;
import io.firecracer.tiny.Model.Specialty;
import io.firecracer.tiny.Model.Vet;
import io.firecracer.tiny.Model.Visit;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.Random;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Collectors;

/** In-memory repositories, seeded deterministically at start so every boot has the same heap shape. */
final class Store {
    private static final String[] FIRST = {"George", "Betty", "Eduardo", "Harold", "Peter", "Jean", "Jeff",
        "Maria", "David", "Carlos", "Ana", "Lena", "Tomas", "Yuki", "Priya", "Omar", "Ines", "Noah"};
    private static final String[] LAST = {"Franklin", "Davis", "Rodriquez", "Black", "McTavish", "Coleman",
        "Escobito", "Schroeder", "Estaban", "Carter", "Leary", "Douglas", "Ortega", "Stevens", "Jenkins"};
    private static final String[] CITY = {"Madison", "Sun Prairie", "McFarland", "Windsor", "Monona",
        "Waunakee", "Middleton"};
    private static final String[] PET = {"Leo", "Basil", "Rosy", "Jewel", "Iggy", "George", "Samantha",
        "Max", "Lucky", "Mulligan", "Freddy", "Sly", "Bella", "Milo", "Coco"};
    private static final String[] REASON = {"rabies shot", "neutered", "spayed", "checkup", "dental cleaning",
        "vaccination", "limping", "allergy", "ear infection"};

    private final Map<Integer, Owner> owners = new ConcurrentHashMap<>();
    private final Map<String, List<Integer>> byLastName = new ConcurrentSkipListMap<>();
    private final Map<Integer, Pet> pets = new ConcurrentHashMap<>();
    private final List<Vet> vets = new CopyOnWriteArrayList<>();
    private final List<PetType> types = new ArrayList<>();
    private final AtomicInteger ownerIds = new AtomicInteger();
    private final AtomicInteger petIds = new AtomicInteger();
    private final AtomicInteger visitIds = new AtomicInteger();

    Store(int nOwners, long seed) {
        Random r = new Random(seed);
        for (String t : new String[] {"cat", "dog", "lizard", "snake", "bird", "hamster"}) {
            types.add(new PetType(types.size() + 1, t));
        }
        List<Specialty> specs = List.of(new Specialty(1, "radiology"), new Specialty(2, "surgery"),
            new Specialty(3, "dentistry"));
        for (int i = 0; i < 12; i++) {
            List<Specialty> s = specs.stream().filter(x -> r.nextInt(3) == 0).toList();
            vets.add(new Vet(i + 1, FIRST[r.nextInt(FIRST.length)], LAST[r.nextInt(LAST.length)], s));
        }
        for (int i = 0; i < nOwners; i++) {
            Owner o = addOwner(FIRST[r.nextInt(FIRST.length)], LAST[r.nextInt(LAST.length)],
                (100 + r.nextInt(9000)) + " " + LAST[r.nextInt(LAST.length)] + " St.",
                CITY[r.nextInt(CITY.length)], String.format(Locale.ROOT, "608555%04d", r.nextInt(10000)));
            int nPets = 1 + r.nextInt(3);
            for (int p = 0; p < nPets; p++) {
                Pet pet = addPet(o.id(), PET[r.nextInt(PET.length)],
                    LocalDate.of(2010 + r.nextInt(14), 1 + r.nextInt(12), 1 + r.nextInt(28)),
                    types.get(r.nextInt(types.size())));
                int nVisits = r.nextInt(4);
                for (int v = 0; v < nVisits; v++) {
                    addVisit(pet.id(), LocalDate.of(2020 + r.nextInt(5), 1 + r.nextInt(12), 1 + r.nextInt(28)),
                        REASON[r.nextInt(REASON.length)]);
                }
            }
        }
    }

    Owner addOwner(String first, String last, String address, String city, String phone) {
        Owner o = new Owner(ownerIds.incrementAndGet(), first, last, address, city, phone,
            new CopyOnWriteArrayList<>());
        owners.put(o.id(), o);
        byLastName.computeIfAbsent(last.toLowerCase(Locale.ROOT), k -> new CopyOnWriteArrayList<>()).add(o.id());
        return o;
    }

    Pet addPet(int ownerId, String name, LocalDate birth, PetType type) {
        Owner o = owner(ownerId).orElseThrow(() -> new NotFound("owner " + ownerId));
        Pet p = new Pet(petIds.incrementAndGet(), ownerId, name, birth, type, new CopyOnWriteArrayList<>());
        pets.put(p.id(), p);
        o.pets().add(p);
        return p;
    }

    Visit addVisit(int petId, LocalDate date, String description) {
        Pet p = Optional.ofNullable(pets.get(petId)).orElseThrow(() -> new NotFound("pet " + petId));
        Visit v = new Visit(visitIds.incrementAndGet(), petId, date, description);
        p.visits().add(v);
        return v;
    }

    Optional<Owner> owner(int id) { return Optional.ofNullable(owners.get(id)); }

    Optional<Pet> pet(int id) { return Optional.ofNullable(pets.get(id)); }

    /** Owners whose last name starts with the prefix (case-insensitive), ordered by name. */
    List<Owner> findOwners(String lastNamePrefix) {
        String p = lastNamePrefix == null ? "" : lastNamePrefix.toLowerCase(Locale.ROOT);
        return byLastName.entrySet().stream()
            .filter(e -> e.getKey().startsWith(p))
            .flatMap(e -> e.getValue().stream())
            .map(owners::get)
            .sorted(Comparator.comparing(Owner::lastName).thenComparing(Owner::firstName).thenComparing(Owner::id))
            .collect(Collectors.toList());
    }

    Collection<Vet> vets() { return vets; }

    List<PetType> petTypes() { return types; }

    Optional<PetType> petType(String name) {
        return types.stream().filter(t -> t.name().equalsIgnoreCase(name)).findFirst();
    }

    Map<String, Object> stats() {
        Map<String, Long> perType = pets.values().stream()
            .collect(Collectors.groupingBy(p -> p.type().name(), java.util.TreeMap::new, Collectors.counting()));
        long visits = pets.values().stream().mapToLong(p -> p.visits().size()).sum();
        return Map.of("owners", owners.size(), "pets", pets.size(), "visits", visits, "petsPerType", perType);
    }

    /** Thrown by lookups; the router turns it into 404. */
    static final class NotFound extends RuntimeException {
        NotFound(String what) { super(what + " not found"); }
    }
}

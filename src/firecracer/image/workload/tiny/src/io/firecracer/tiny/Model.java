package io.firecracer.tiny;

import java.time.LocalDate;
import java.util.List;

/** The clinic's domain, as in Spring Petclinic: owners own pets, pets have visits, vets have specialties. */
final class Model {
    private Model() {}

    record PetType(int id, String name) {}

    record Specialty(int id, String name) {}

    record Vet(int id, String firstName, String lastName, List<Specialty> specialties) {
        int nrOfSpecialties() { return specialties.size(); }
    }

    record Visit(int id, int petId, LocalDate date, String description) {}

    record Pet(int id, int ownerId, String name, LocalDate birthDate, PetType type, List<Visit> visits) {}

    record Owner(int id, String firstName, String lastName, String address, String city, String telephone,
                 List<Pet> pets) {
        String fullName() { return firstName + " " + lastName; }
    }
}

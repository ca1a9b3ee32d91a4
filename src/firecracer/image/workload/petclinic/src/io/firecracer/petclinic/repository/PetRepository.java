package io.firecracer.petclinic.repository;

import io.firecracer.petclinic.model.Pet;
import io.firecracer.petclinic.model.PetType;
import java.util.List;
import java.util.Map;

/** Pets and pet types. */
public interface PetRepository {
    List<PetType> findPetTypes();

    /** The pet with its visits, or null. */
    Pet findById(int id);

    void save(Pet pet);

    /** Adds one to the pet's visit counter; false if there is no such pet. */
    boolean incrementVisitCount(int petId);

    long count();

    Map<String, Long> countPerType();
}

package io.firecracer.petclinic.service;

import io.firecracer.petclinic.model.Owner;
import io.firecracer.petclinic.model.Pet;
import io.firecracer.petclinic.model.PetType;
import io.firecracer.petclinic.model.Stats;
import io.firecracer.petclinic.model.Vet;
import io.firecracer.petclinic.model.Visit;
import java.util.List;

/**
 * The clinic's use cases; the one facade the controllers call. Its implementation is wrapped in a JDK
 * proxy that runs every method in a transaction ({@code @Transactional}).
 */
public interface ClinicService {
    List<Owner> findOwners(String lastNamePrefix, int offset, int limit);

    long countOwners(String lastNamePrefix);

    /** @throws NotFoundException when there is no such owner */
    Owner owner(int id);

    /** @throws NotFoundException when there is no such pet */
    Pet pet(int id);

    List<PetType> petTypes();

    List<Vet> vets();

    void saveOwner(Owner owner);

    /** Adds a pet to an owner; the pet's type is looked up by name. */
    Pet addPet(int ownerId, String name, java.time.LocalDate birthDate, String typeName);

    /** The write path: one transaction bumps the pet's visit counter and inserts the visit. */
    Visit addVisit(int petId, Visit visit);

    Stats stats();
}

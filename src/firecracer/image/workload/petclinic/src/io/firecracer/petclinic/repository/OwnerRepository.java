package io.firecracer.petclinic.repository;

import io.firecracer.petclinic.model.Owner;
import java.util.List;

/** Owners with their pets and the pets' visits. */
public interface OwnerRepository {
    /** Owners whose last name starts with the prefix, ordered by name, at most {@code limit} from {@code offset}. */
    List<Owner> findByLastName(String lastNamePrefix, int offset, int limit);

    long countByLastName(String lastNamePrefix);

    /** The owner, or null. */
    Owner findById(int id);

    void save(Owner owner);

    long count();
}

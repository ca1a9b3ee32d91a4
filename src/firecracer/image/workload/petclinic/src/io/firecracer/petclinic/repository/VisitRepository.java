package io.firecracer.petclinic.repository;

import io.firecracer.petclinic.model.Visit;
import java.util.List;

/** Visits of pets. */
public interface VisitRepository {
    void save(Visit visit);

    List<Visit> findByPetId(int petId);

    long count();
}

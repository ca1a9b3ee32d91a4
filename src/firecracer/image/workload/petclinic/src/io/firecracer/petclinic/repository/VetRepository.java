package io.firecracer.petclinic.repository;

import io.firecracer.petclinic.model.Vet;
import java.util.List;

/** Vets with their specialties. */
public interface VetRepository {
    List<Vet> findAll();
}

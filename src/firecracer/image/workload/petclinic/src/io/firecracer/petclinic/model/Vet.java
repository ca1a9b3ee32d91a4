package io.firecracer.petclinic.model;

import java.util.ArrayList;
import java.util.List;

/** A veterinarian and the specialties they practise. */
public class Vet extends Person {
    private final List<Specialty> specialties = new ArrayList<>();

    public List<Specialty> getSpecialties() { return specialties; }

    public void addSpecialty(Specialty s) { specialties.add(s); }

    public int getNrOfSpecialties() { return specialties.size(); }
}

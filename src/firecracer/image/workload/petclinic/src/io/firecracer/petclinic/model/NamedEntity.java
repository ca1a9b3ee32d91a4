package io.firecracer.petclinic.model;

/** An entity with a name (pets, pet types, specialties). */
public class NamedEntity extends BaseEntity {
    private String name;

    public String getName() { return name; }

    public void setName(String name) { this.name = name; }

    @Override
    public String toString() { return name; }
}

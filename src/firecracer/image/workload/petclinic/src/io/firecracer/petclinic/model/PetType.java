package io.firecracer.petclinic.model;

/** cat, dog, lizard, snake, bird, hamster. */
public class PetType extends NamedEntity {
}

package io.firecracer.petclinic.model;

/** A vet's specialty: radiology, surgery, dentistry. */
public class Specialty extends NamedEntity {
}

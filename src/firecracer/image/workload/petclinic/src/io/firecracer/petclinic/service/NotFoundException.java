package io.firecracer.petclinic.service;

/** A looked-up entity does not exist; the web layer answers 404. */
public class NotFoundException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public NotFoundException(String what) { super(what + " not found"); }
}

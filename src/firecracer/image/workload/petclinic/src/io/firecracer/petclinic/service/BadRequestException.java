package io.firecracer.petclinic.service;

/** Input the clinic rejects (missing field, unknown pet type); the web layer answers 400. */
public class BadRequestException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public BadRequestException(String why) { super(why); }
}

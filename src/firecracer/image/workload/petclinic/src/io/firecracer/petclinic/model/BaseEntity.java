package io.firecracer.petclinic.model;

import com.fasterxml.jackson.annotation.JsonIgnore;

/** Base class of every entity: the database id (null until the row exists), as in Spring PetClinic. */
public class BaseEntity {
    private Integer id;

    public Integer getId() { return id; }

    public void setId(Integer id) { this.id = id; }

    @JsonIgnore
    public boolean isNew() { return id == null; }
}

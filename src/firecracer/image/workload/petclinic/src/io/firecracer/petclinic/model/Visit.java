package io.firecracer.petclinic.model;

import java.time.LocalDate;
import org.springframework.format.annotation.DateTimeFormat;

/** A visit of a pet to the clinic. A new visit is dated today unless a date is given. */
public class Visit extends BaseEntity {
    @DateTimeFormat(pattern = "yyyy-MM-dd")
    private LocalDate date = LocalDate.now();
    private String description;
    private Integer petId;

    public LocalDate getDate() { return date; }

    public void setDate(LocalDate date) { this.date = date; }

    public String getDescription() { return description; }

    public void setDescription(String description) { this.description = description; }

    public Integer getPetId() { return petId; }

    public void setPetId(Integer petId) { this.petId = petId; }
}

package io.firecracer.petclinic.model;

import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;
import org.springframework.format.annotation.DateTimeFormat;

/** A pet: name, birth date, type, owner, visits (newest last), and the visit counter kept by the service. */
public class Pet extends NamedEntity {
    @DateTimeFormat(pattern = "yyyy-MM-dd")
    private LocalDate birthDate;
    private PetType type;
    private Integer ownerId;
    private int visitCount;
    private final List<Visit> visits = new ArrayList<>();

    public LocalDate getBirthDate() { return birthDate; }

    public void setBirthDate(LocalDate birthDate) { this.birthDate = birthDate; }

    public PetType getType() { return type; }

    public void setType(PetType type) { this.type = type; }

    public Integer getOwnerId() { return ownerId; }

    public void setOwnerId(Integer ownerId) { this.ownerId = ownerId; }

    public int getVisitCount() { return visitCount; }

    public void setVisitCount(int visitCount) { this.visitCount = visitCount; }

    public List<Visit> getVisits() { return visits; }

    public void addVisit(Visit visit) {
        visits.add(visit);
        visit.setPetId(getId());
    }
}

package io.firecracer.petclinic.model;

import java.util.Map;

/** Row counts of the clinic (the welcome page and /api/stats). */
public class Stats {
    private final long owners;
    private final long pets;
    private final long visits;
    private final long vets;
    private final Map<String, Long> petsPerType;

    public Stats(long owners, long pets, long visits, long vets, Map<String, Long> petsPerType) {
        this.owners = owners;
        this.pets = pets;
        this.visits = visits;
        this.vets = vets;
        this.petsPerType = petsPerType;
    }

    public long getOwners() { return owners; }

    public long getPets() { return pets; }

    public long getVisits() { return visits; }

    public long getVets() { return vets; }

    public Map<String, Long> getPetsPerType() { return petsPerType; }
}

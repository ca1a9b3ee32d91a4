package io.firecracer.petclinic.model;

import java.util.ArrayList;
import java.util.List;

/** A pet owner with address, phone and pets (each with its visits). */
public class Owner extends Person {
    private String address;
    private String city;
    private String telephone;
    private final List<Pet> pets = new ArrayList<>();

    public String getAddress() { return address; }

    public void setAddress(String address) { this.address = address; }

    public String getCity() { return city; }

    public void setCity(String city) { this.city = city; }

    public String getTelephone() { return telephone; }

    public void setTelephone(String telephone) { this.telephone = telephone; }

    public List<Pet> getPets() { return pets; }

    public void addPet(Pet pet) {
        pets.add(pet);
        pet.setOwnerId(getId());
    }

    /** The owner's pet with this id, or null. */
    public Pet getPet(int petId) {
        for (Pet p : pets) {
            if (p.getId() != null && p.getId() == petId) return p;
        }
        return null;
    }
}

package io.firecracer.petclinic.service;

import io.firecracer.petclinic.model.Owner;
import io.firecracer.petclinic.model.Pet;
import io.firecracer.petclinic.model.PetType;
import io.firecracer.petclinic.model.Stats;
import io.firecracer.petclinic.model.Vet;
import io.firecracer.petclinic.model.Visit;
import io.firecracer.petclinic.repository.OwnerRepository;
import io.firecracer.petclinic.repository.PetRepository;
import io.firecracer.petclinic.repository.VetRepository;
import io.firecracer.petclinic.repository.VisitRepository;
import java.time.LocalDate;
import java.util.List;
import org.springframework.stereotype.Service;
import org.springframework.transaction.annotation.Transactional;

/** Repositories behind transactions: read-only ones for queries, read-write ones for the writes. */
@Service
@Transactional(readOnly = true)
public class ClinicServiceImpl implements ClinicService {
    private final OwnerRepository owners;
    private final PetRepository pets;
    private final VetRepository vets;
    private final VisitRepository visits;

    public ClinicServiceImpl(OwnerRepository owners, PetRepository pets, VetRepository vets,
                             VisitRepository visits) {
        this.owners = owners;
        this.pets = pets;
        this.vets = vets;
        this.visits = visits;
    }

    @Override
    public List<Owner> findOwners(String lastNamePrefix, int offset, int limit) {
        return owners.findByLastName(lastNamePrefix, offset, limit);
    }

    @Override
    public long countOwners(String lastNamePrefix) { return owners.countByLastName(lastNamePrefix); }

    @Override
    public Owner owner(int id) {
        Owner o = owners.findById(id);
        if (o == null) throw new NotFoundException("owner " + id);
        return o;
    }

    @Override
    public Pet pet(int id) {
        Pet p = pets.findById(id);
        if (p == null) throw new NotFoundException("pet " + id);
        return p;
    }

    @Override
    public List<PetType> petTypes() { return pets.findPetTypes(); }

    @Override
    public List<Vet> vets() { return vets.findAll(); }

    @Override
    @Transactional
    public void saveOwner(Owner owner) {
        for (String[] f : new String[][] {{"firstName", owner.getFirstName()}, {"lastName", owner.getLastName()},
            {"address", owner.getAddress()}, {"city", owner.getCity()}, {"telephone", owner.getTelephone()}}) {
            if (f[1] == null || f[1].isBlank()) throw new BadRequestException("field '" + f[0] + "' is required");
        }
        if (!owner.getTelephone().matches("\\d{1,10}")) {
            throw new BadRequestException("telephone must be 1 to 10 digits");
        }
        owners.save(owner);
    }

    @Override
    @Transactional
    public Pet addPet(int ownerId, String name, LocalDate birthDate, String typeName) {
        Owner owner = owner(ownerId);
        if (name == null || name.isBlank()) throw new BadRequestException("field 'name' is required");
        if (birthDate == null) throw new BadRequestException("field 'birthDate' is required");
        PetType type = pets.findPetTypes().stream().filter(t -> t.getName().equalsIgnoreCase(typeName))
            .findFirst().orElseThrow(() -> new BadRequestException("unknown pet type " + typeName));
        Pet pet = new Pet();
        pet.setName(name);
        pet.setBirthDate(birthDate);
        pet.setType(type);
        owner.addPet(pet);
        pets.save(pet);
        return pet;
    }

    @Override
    @Transactional
    public Visit addVisit(int petId, Visit visit) {
        if (visit.getDescription() == null || visit.getDescription().isBlank()) {
            throw new BadRequestException("field 'description' is required");
        }
        if (visit.getDate() == null) visit.setDate(LocalDate.now());
        // counter first: if the insert fails (e.g. a description longer than the column), the rollback
        // must undo this update too — the transaction is observable through visitCount
        if (!pets.incrementVisitCount(petId)) throw new NotFoundException("pet " + petId);
        visit.setId(null);
        visit.setPetId(petId);
        visits.save(visit);
        return visit;
    }

    @Override
    public Stats stats() {
        return new Stats(owners.count(), pets.count(), visits.count(), vets.findAll().size(), pets.countPerType());
    }
}

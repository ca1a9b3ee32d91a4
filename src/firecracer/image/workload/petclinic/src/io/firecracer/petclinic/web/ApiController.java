package io.firecracer.petclinic.web;

import io.firecracer.petclinic.model.Owner;
import io.firecracer.petclinic.model.Pet;
import io.firecracer.petclinic.model.PetType;
import io.firecracer.petclinic.model.Stats;
import io.firecracer.petclinic.model.Vet;
import io.firecracer.petclinic.model.Visit;
import io.firecracer.petclinic.service.BadRequestException;
import io.firecracer.petclinic.service.ClinicService;
import java.time.LocalDate;
import java.util.List;
import org.springframework.http.HttpStatus;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.PathVariable;
import org.springframework.web.bind.annotation.PostMapping;
import org.springframework.web.bind.annotation.RequestBody;
import org.springframework.web.bind.annotation.RequestMapping;
import org.springframework.web.bind.annotation.RequestParam;
import org.springframework.web.bind.annotation.ResponseStatus;
import org.springframework.web.bind.annotation.RestController;

/** The JSON API (Jackson): the same data as the pages, and the writes (owners, pets, visits). */
@RestController
@RequestMapping(path = "/api", produces = "application/json")
public class ApiController {
    /** Body of {@code POST /api/owners/{id}/pets}: the type is given by name. */
    public static class NewPet {
        private String name;
        private LocalDate birthDate;
        private String type;

        public String getName() { return name; }

        public void setName(String name) { this.name = name; }

        public LocalDate getBirthDate() { return birthDate; }

        public void setBirthDate(LocalDate birthDate) { this.birthDate = birthDate; }

        public String getType() { return type; }

        public void setType(String type) { this.type = type; }
    }

    private final ClinicService clinic;

    public ApiController(ClinicService clinic) { this.clinic = clinic; }

    /**
     * Owners whose last name starts with {@code lastName}, with pets and visits, paged like the HTML list
     * ({@code page} from 1, {@code size} up to 1000, default 50): every answer stays bounded however many
     * owners were seeded.
     */
    @GetMapping("/owners")
    public List<Owner> owners(@RequestParam(defaultValue = "") String lastName,
                              @RequestParam(defaultValue = "1") int page,
                              @RequestParam(defaultValue = "50") int size) {
        if (page < 1 || size < 1 || size > 1000) {
            throw new BadRequestException("page must be >= 1 and size between 1 and 1000");
        }
        return clinic.findOwners(lastName, (int) Math.min(Integer.MAX_VALUE, (long) (page - 1) * size), size);
    }

    @GetMapping("/owners/{ownerId}")
    public Owner owner(@PathVariable int ownerId) { return clinic.owner(ownerId); }

    @PostMapping(path = "/owners", consumes = "application/json")
    @ResponseStatus(HttpStatus.CREATED)
    public Owner createOwner(@RequestBody Owner owner) {
        owner.setId(null);
        clinic.saveOwner(owner);
        return owner;
    }

    @PostMapping(path = "/owners/{ownerId}/pets", consumes = "application/json")
    @ResponseStatus(HttpStatus.CREATED)
    public Pet createPet(@PathVariable int ownerId, @RequestBody NewPet body) {
        return clinic.addPet(ownerId, body.getName(), body.getBirthDate(), body.getType());
    }

    @GetMapping("/pets/{petId}")
    public Pet pet(@PathVariable int petId) { return clinic.pet(petId); }

    @GetMapping("/pets/{petId}/visits")
    public List<Visit> visits(@PathVariable int petId) { return clinic.pet(petId).getVisits(); }

    /** The JSON write path: a visit for a pet, in one transaction with the pet's visit counter. */
    @PostMapping(path = "/pets/{petId}/visits", consumes = "application/json")
    @ResponseStatus(HttpStatus.CREATED)
    public Visit createVisit(@PathVariable int petId, @RequestBody Visit visit) {
        return clinic.addVisit(petId, visit);
    }

    @GetMapping("/vets")
    public List<Vet> vets() { return clinic.vets(); }

    @GetMapping("/pettypes")
    public List<PetType> petTypes() { return clinic.petTypes(); }

    @GetMapping("/stats")
    public Stats stats() { return clinic.stats(); }
}

package io.firecracer.petclinic.web;

import io.firecracer.petclinic.model.Owner;
import io.firecracer.petclinic.model.Pet;
import io.firecracer.petclinic.model.Visit;
import io.firecracer.petclinic.service.ClinicService;
import io.firecracer.petclinic.service.NotFoundException;
import java.util.ArrayList;
import java.util.List;
import org.springframework.stereotype.Controller;
import org.springframework.ui.Model;
import org.springframework.validation.BindingResult;
import org.springframework.validation.FieldError;
import org.springframework.web.bind.WebDataBinder;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.InitBinder;
import org.springframework.web.bind.annotation.ModelAttribute;
import org.springframework.web.bind.annotation.PathVariable;
import org.springframework.web.bind.annotation.PostMapping;

/** The HTML write path: the "new visit" form of a pet, and its POST (a transaction, then a redirect). */
@Controller
public class VisitController {
    private final ClinicService clinic;

    public VisitController(ClinicService clinic) { this.clinic = clinic; }

    @InitBinder
    public void noIds(WebDataBinder binder) { binder.setDisallowedFields("id", "petId"); }

    @GetMapping("/owners/{ownerId}/pets/{petId}/visits/new")
    public String form(@PathVariable int ownerId, @PathVariable int petId, Model model) {
        fill(model, ownerId, petId, new Visit(), List.of());
        return "visitForm";
    }

    @PostMapping("/owners/{ownerId}/pets/{petId}/visits/new")
    public String submit(@PathVariable int ownerId, @PathVariable int petId, @ModelAttribute("visit") Visit visit,
                         BindingResult binding, Model model) {
        List<String> errors = new ArrayList<>();
        for (FieldError e : binding.getFieldErrors()) errors.add(e.getField() + ": invalid value");
        if (visit.getDescription() == null || visit.getDescription().isBlank()) errors.add("description: required");
        if (!errors.isEmpty()) {
            fill(model, ownerId, petId, visit, errors);
            return "visitForm";
        }
        petOf(clinic.owner(ownerId), petId);
        clinic.addVisit(petId, visit);
        return "redirect:/owners/{ownerId}";
    }

    private void fill(Model model, int ownerId, int petId, Visit visit, List<String> errors) {
        Owner owner = clinic.owner(ownerId);
        model.addAttribute("title", "New visit");
        model.addAttribute("owner", owner);
        model.addAttribute("pet", petOf(owner, petId));
        model.addAttribute("visit", visit);
        model.addAttribute("errors", errors);
    }

    private static Pet petOf(Owner owner, int petId) {
        Pet pet = owner.getPet(petId);
        if (pet == null) throw new NotFoundException("pet " + petId + " of owner " + owner.getId());
        return pet;
    }
}

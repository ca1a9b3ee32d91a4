package io.firecracer.petclinic.web;

import io.firecracer.petclinic.service.ClinicService;
import org.springframework.stereotype.Controller;
import org.springframework.ui.Model;
import org.springframework.web.bind.annotation.GetMapping;

/** The list of veterinarians with their specialties. */
@Controller
public class VetController {
    private final ClinicService clinic;

    public VetController(ClinicService clinic) { this.clinic = clinic; }

    @GetMapping("/vets")
    public String vets(Model model) {
        model.addAttribute("title", "Veterinarians");
        model.addAttribute("vets", clinic.vets());
        return "vets";
    }
}

package io.firecracer.petclinic.web;

import io.firecracer.petclinic.service.ClinicService;
import org.springframework.stereotype.Controller;
import org.springframework.ui.Model;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.ResponseBody;

/** The welcome page (with the clinic's counts) and the health probe. */
@Controller
public class WelcomeController {
    private final ClinicService clinic;

    public WelcomeController(ClinicService clinic) { this.clinic = clinic; }

    @GetMapping("/")
    public String welcome(Model model) {
        model.addAttribute("title", "Welcome");
        model.addAttribute("stats", clinic.stats());
        return "welcome";
    }

    @GetMapping(value = "/health", produces = "text/plain")
    @ResponseBody
    public String health() { return "UP"; }
}

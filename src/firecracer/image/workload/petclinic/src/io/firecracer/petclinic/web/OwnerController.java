package io.firecracer.petclinic.web;

import io.firecracer.petclinic.model.Owner;
import io.firecracer.petclinic.service.ClinicService;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.springframework.stereotype.Controller;
import org.springframework.ui.Model;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.PathVariable;
import org.springframework.web.bind.annotation.RequestParam;

/** Owner pages: the search form, the result list (paged) and an owner's details with pets and visits. */
@Controller
public class OwnerController {
    static final int PAGE_SIZE = 50;
    private final ClinicService clinic;

    public OwnerController(ClinicService clinic) { this.clinic = clinic; }

    @GetMapping("/owners/find")
    public String findForm(Model model) {
        model.addAttribute("title", "Find owners");
        return "findOwners";
    }

    /**
     * Owners whose last name starts with {@code lastName} (all without it), {@link #PAGE_SIZE} per page.
     * Unlike the original, a single match is listed rather than redirected to, so the page is always 200.
     */
    @GetMapping("/owners")
    public String list(@RequestParam(defaultValue = "") String lastName, @RequestParam(defaultValue = "1") int page,
                       Model model) {
        long count = clinic.countOwners(lastName);
        int pages = (int) Math.max(1, (count + PAGE_SIZE - 1) / PAGE_SIZE);
        int current = Math.min(Math.max(page, 1), pages);
        List<Owner> owners = clinic.findOwners(lastName, (current - 1) * PAGE_SIZE, PAGE_SIZE);
        List<Map<String, Object>> links = new ArrayList<>();
        for (int p = Math.max(1, current - 3); p <= Math.min(pages, current + 3); p++) {
            links.add(Map.of("number", p, "current", p == current));
        }
        model.addAttribute("title", "Owners");
        model.addAttribute("owners", owners);
        model.addAttribute("lastName", lastName);
        model.addAttribute("count", count);
        model.addAttribute("any", !owners.isEmpty());
        model.addAttribute("page", current);
        model.addAttribute("pages", pages);
        model.addAttribute("pageLinks", links);
        return "owners";
    }

    @GetMapping("/owners/{ownerId}")
    public String show(@PathVariable int ownerId, Model model) {
        Owner owner = clinic.owner(ownerId);
        model.addAttribute("title", owner.getFullName());
        model.addAttribute("owner", owner);
        return "ownerDetails";
    }
}

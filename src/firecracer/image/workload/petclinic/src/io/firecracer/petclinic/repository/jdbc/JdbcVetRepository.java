package io.firecracer.petclinic.repository.jdbc;

import io.firecracer.petclinic.model.Specialty;
import io.firecracer.petclinic.model.Vet;
import io.firecracer.petclinic.repository.VetRepository;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.springframework.jdbc.core.BeanPropertyRowMapper;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.stereotype.Repository;

/** Vets with their specialties over JDBC. */
@Repository
public class JdbcVetRepository implements VetRepository {
    private final JdbcTemplate jdbc;

    public JdbcVetRepository(JdbcTemplate jdbc) { this.jdbc = jdbc; }

    @Override
    public List<Vet> findAll() {
        List<Vet> vets = jdbc.query("SELECT id, first_name, last_name FROM vets ORDER BY last_name, first_name",
            BeanPropertyRowMapper.newInstance(Vet.class));
        Map<Integer, Vet> byId = new LinkedHashMap<>();
        for (Vet v : vets) byId.put(v.getId(), v);
        jdbc.query("SELECT vs.vet_id, s.id, s.name FROM vet_specialties vs JOIN specialties s "
            + "ON s.id = vs.specialty_id ORDER BY s.name", rs -> {
                Specialty s = new Specialty();
                s.setId(rs.getInt("id"));
                s.setName(rs.getString("name"));
                Vet v = byId.get(rs.getInt("vet_id"));
                if (v != null) v.addSpecialty(s);
            });
        return vets;
    }
}

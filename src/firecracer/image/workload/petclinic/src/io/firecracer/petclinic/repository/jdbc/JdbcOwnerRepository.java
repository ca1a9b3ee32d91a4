package io.firecracer.petclinic.repository.jdbc;

import io.firecracer.petclinic.model.Owner;
import io.firecracer.petclinic.model.Pet;
import io.firecracer.petclinic.model.PetType;
import io.firecracer.petclinic.model.Visit;
import io.firecracer.petclinic.repository.OwnerRepository;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import javax.sql.DataSource;
import org.springframework.jdbc.core.BeanPropertyRowMapper;
import org.springframework.jdbc.core.RowMapper;
import org.springframework.jdbc.core.namedparam.BeanPropertySqlParameterSource;
import org.springframework.jdbc.core.namedparam.MapSqlParameterSource;
import org.springframework.jdbc.core.namedparam.NamedParameterJdbcTemplate;
import org.springframework.jdbc.core.simple.SimpleJdbcInsert;
import org.springframework.stereotype.Repository;

/**
 * Owners over JDBC. Pets and visits of a page of owners are loaded with one query each ({@code IN}
 * lists), not one query per owner as the original PetClinic did.
 */
@Repository
public class JdbcOwnerRepository implements OwnerRepository {
    private static final String COLUMNS = "id, first_name, last_name, address, city, telephone";
    private final NamedParameterJdbcTemplate jdbc;
    private final SimpleJdbcInsert insert;
    private final RowMapper<Owner> ownerMapper = BeanPropertyRowMapper.newInstance(Owner.class);

    public JdbcOwnerRepository(NamedParameterJdbcTemplate jdbc, DataSource dataSource) {
        this.jdbc = jdbc;
        this.insert = new SimpleJdbcInsert(dataSource).withTableName("owners").usingGeneratedKeyColumns("id");
    }

    @Override
    public List<Owner> findByLastName(String prefix, int offset, int limit) {
        MapSqlParameterSource p = new MapSqlParameterSource("lastName", like(prefix))
            .addValue("offset", offset).addValue("limit", limit);
        List<Owner> owners = jdbc.query("SELECT " + COLUMNS + " FROM owners WHERE last_name LIKE :lastName "
            + "ORDER BY last_name, first_name, id LIMIT :limit OFFSET :offset", p, ownerMapper);
        loadPetsAndVisits(owners);
        return owners;
    }

    @Override
    public long countByLastName(String prefix) {
        Long n = jdbc.queryForObject("SELECT COUNT(*) FROM owners WHERE last_name LIKE :lastName",
            new MapSqlParameterSource("lastName", like(prefix)), Long.class);
        return n == null ? 0 : n;
    }

    @Override
    public Owner findById(int id) {
        List<Owner> found = jdbc.query("SELECT " + COLUMNS + " FROM owners WHERE id = :id",
            new MapSqlParameterSource("id", id), ownerMapper);
        if (found.isEmpty()) return null;
        loadPetsAndVisits(found);
        return found.get(0);
    }

    @Override
    public void save(Owner owner) {
        if (owner.isNew()) {
            owner.setId(insert.executeAndReturnKey(new BeanPropertySqlParameterSource(owner)).intValue());
        } else {
            jdbc.update("UPDATE owners SET first_name=:firstName, last_name=:lastName, address=:address, "
                + "city=:city, telephone=:telephone WHERE id=:id", new BeanPropertySqlParameterSource(owner));
        }
    }

    @Override
    public long count() {
        Long n = jdbc.getJdbcOperations().queryForObject("SELECT COUNT(*) FROM owners", Long.class);
        return n == null ? 0 : n;
    }

    private static String like(String prefix) {
        String p = prefix == null ? "" : prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_");
        return p + "%";
    }

    /** Fills in the pets (with types) and the visits of these owners: two queries. */
    private void loadPetsAndVisits(Collection<Owner> owners) {
        if (owners.isEmpty()) return;
        Map<Integer, Owner> byId = new LinkedHashMap<>();
        for (Owner o : owners) byId.put(o.getId(), o);
        Map<Integer, Pet> pets = new HashMap<>();
        jdbc.query("SELECT p.id, p.name, p.birth_date, p.owner_id, p.visit_count, t.id AS type_id, "
            + "t.name AS type_name FROM pets p JOIN types t ON p.type_id = t.id WHERE p.owner_id IN (:ids) "
            + "ORDER BY p.name, p.id", new MapSqlParameterSource("ids", new ArrayList<>(byId.keySet())), rs -> {
                Pet pet = new Pet();
                pet.setId(rs.getInt("id"));
                pet.setName(rs.getString("name"));
                pet.setBirthDate(rs.getObject("birth_date", java.time.LocalDate.class));
                pet.setVisitCount(rs.getInt("visit_count"));
                PetType type = new PetType();
                type.setId(rs.getInt("type_id"));
                type.setName(rs.getString("type_name"));
                pet.setType(type);
                byId.get(rs.getInt("owner_id")).addPet(pet);
                pets.put(pet.getId(), pet);
            });
        if (pets.isEmpty()) return;
        jdbc.query("SELECT id, pet_id, visit_date, description FROM visits WHERE pet_id IN (:ids) "
            + "ORDER BY visit_date, id", new MapSqlParameterSource("ids", new ArrayList<>(pets.keySet())), rs -> {
                pets.get(rs.getInt("pet_id")).addVisit(JdbcVisitRepository.visit(rs));
            });
    }
}

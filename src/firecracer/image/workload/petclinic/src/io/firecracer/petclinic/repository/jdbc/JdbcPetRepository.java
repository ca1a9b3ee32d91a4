package io.firecracer.petclinic.repository.jdbc;

import io.firecracer.petclinic.model.Pet;
import io.firecracer.petclinic.model.PetType;
import io.firecracer.petclinic.repository.PetRepository;
import io.firecracer.petclinic.repository.VisitRepository;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import javax.sql.DataSource;
import org.springframework.jdbc.core.BeanPropertyRowMapper;
import org.springframework.jdbc.core.namedparam.MapSqlParameterSource;
import org.springframework.jdbc.core.namedparam.NamedParameterJdbcTemplate;
import org.springframework.jdbc.core.simple.SimpleJdbcInsert;
import org.springframework.stereotype.Repository;

/** Pets and pet types over JDBC. */
@Repository
public class JdbcPetRepository implements PetRepository {
    private final NamedParameterJdbcTemplate jdbc;
    private final SimpleJdbcInsert insert;
    private final VisitRepository visits;

    public JdbcPetRepository(NamedParameterJdbcTemplate jdbc, DataSource dataSource, VisitRepository visits) {
        this.jdbc = jdbc;
        this.visits = visits;
        this.insert = new SimpleJdbcInsert(dataSource).withTableName("pets").usingGeneratedKeyColumns("id")
            .usingColumns("name", "birth_date", "type_id", "owner_id");
    }

    @Override
    public List<PetType> findPetTypes() {
        return jdbc.query("SELECT id, name FROM types ORDER BY name", BeanPropertyRowMapper.newInstance(PetType.class));
    }

    @Override
    public Pet findById(int id) {
        List<Pet> found = jdbc.query("SELECT p.id, p.name, p.birth_date, p.owner_id, p.visit_count, "
            + "t.id AS type_id, t.name AS type_name FROM pets p JOIN types t ON p.type_id = t.id WHERE p.id = :id",
            new MapSqlParameterSource("id", id), (rs, n) -> {
                Pet pet = new Pet();
                pet.setId(rs.getInt("id"));
                pet.setName(rs.getString("name"));
                pet.setBirthDate(rs.getObject("birth_date", java.time.LocalDate.class));
                pet.setOwnerId(rs.getInt("owner_id"));
                pet.setVisitCount(rs.getInt("visit_count"));
                PetType type = new PetType();
                type.setId(rs.getInt("type_id"));
                type.setName(rs.getString("type_name"));
                pet.setType(type);
                return pet;
            });
        if (found.isEmpty()) return null;
        Pet pet = found.get(0);
        visits.findByPetId(id).forEach(pet::addVisit);
        return pet;
    }

    @Override
    public void save(Pet pet) {
        MapSqlParameterSource p = new MapSqlParameterSource("name", pet.getName())
            .addValue("birth_date", pet.getBirthDate()).addValue("type_id", pet.getType().getId())
            .addValue("owner_id", pet.getOwnerId());
        if (pet.isNew()) {
            pet.setId(insert.executeAndReturnKey(p).intValue());
        } else {
            jdbc.update("UPDATE pets SET name=:name, birth_date=:birth_date, type_id=:type_id, owner_id=:owner_id "
                + "WHERE id=:id", p.addValue("id", pet.getId()));
        }
    }

    @Override
    public boolean incrementVisitCount(int petId) {
        return jdbc.update("UPDATE pets SET visit_count = visit_count + 1 WHERE id = :id",
            new MapSqlParameterSource("id", petId)) == 1;
    }

    @Override
    public long count() {
        Long n = jdbc.getJdbcOperations().queryForObject("SELECT COUNT(*) FROM pets", Long.class);
        return n == null ? 0 : n;
    }

    @Override
    public Map<String, Long> countPerType() {
        Map<String, Long> out = new TreeMap<>();
        jdbc.getJdbcOperations().query("SELECT t.name, COUNT(p.id) FROM types t LEFT JOIN pets p "
            + "ON p.type_id = t.id GROUP BY t.name", rs -> { out.put(rs.getString(1), rs.getLong(2)); });
        return out;
    }
}

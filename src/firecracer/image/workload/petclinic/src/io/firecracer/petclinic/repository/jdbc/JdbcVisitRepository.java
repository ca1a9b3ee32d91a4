package io.firecracer.petclinic.repository.jdbc;

import io.firecracer.petclinic.model.Visit;
import io.firecracer.petclinic.repository.VisitRepository;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.List;
import javax.sql.DataSource;
import org.springframework.jdbc.core.namedparam.MapSqlParameterSource;
import org.springframework.jdbc.core.namedparam.NamedParameterJdbcTemplate;
import org.springframework.jdbc.core.simple.SimpleJdbcInsert;
import org.springframework.stereotype.Repository;

/** Visits over JDBC. */
@Repository
public class JdbcVisitRepository implements VisitRepository {
    private final NamedParameterJdbcTemplate jdbc;
    private final SimpleJdbcInsert insert;

    public JdbcVisitRepository(NamedParameterJdbcTemplate jdbc, DataSource dataSource) {
        this.jdbc = jdbc;
        this.insert = new SimpleJdbcInsert(dataSource).withTableName("visits").usingGeneratedKeyColumns("id")
            .usingColumns("pet_id", "visit_date", "description");
    }

    @Override
    public void save(Visit visit) {
        if (!visit.isNew()) throw new UnsupportedOperationException("visits are never updated");
        visit.setId(insert.executeAndReturnKey(new MapSqlParameterSource("pet_id", visit.getPetId())
            .addValue("visit_date", visit.getDate()).addValue("description", visit.getDescription())).intValue());
    }

    @Override
    public List<Visit> findByPetId(int petId) {
        return jdbc.query("SELECT id, pet_id, visit_date, description FROM visits WHERE pet_id = :id "
            + "ORDER BY visit_date, id", new MapSqlParameterSource("id", petId), (rs, n) -> visit(rs));
    }

    @Override
    public long count() {
        Long n = jdbc.getJdbcOperations().queryForObject("SELECT COUNT(*) FROM visits", Long.class);
        return n == null ? 0 : n;
    }

    static Visit visit(ResultSet rs) throws SQLException {
        Visit v = new Visit();
        v.setId(rs.getInt("id"));
        v.setPetId(rs.getInt("pet_id"));
        v.setDate(rs.getObject("visit_date", java.time.LocalDate.class));
        v.setDescription(rs.getString("description"));
        return v;
    }
}

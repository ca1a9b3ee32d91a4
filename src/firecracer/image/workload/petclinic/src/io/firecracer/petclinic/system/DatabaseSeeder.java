package io.firecracer.petclinic.system;

import java.sql.Date;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Random;
import javax.sql.DataSource;
import org.springframework.beans.factory.InitializingBean;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.core.io.ClassPathResource;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.jdbc.datasource.init.DatabasePopulatorUtils;
import org.springframework.jdbc.datasource.init.ResourceDatabasePopulator;
import org.springframework.stereotype.Component;

/**
 * Creates the schema and loads the original PetClinic's data (db/schema.sql, db/data.sql: 10 owners,
 * 13 pets, 4 visits, 6 vets), then adds generated owners, pets and visits up to {@code petclinic.owners}
 * owners. The generator is seeded, so every boot builds the same database and the same heap shape.
 */
@Component
public class DatabaseSeeder implements InitializingBean {
    private static final String[] FIRST = {"George", "Betty", "Eduardo", "Harold", "Peter", "Jean", "Jeff",
        "Maria", "David", "Carlos", "Ana", "Lena", "Tomas", "Yuki", "Priya", "Omar", "Ines", "Noah"};
    private static final String[] LAST = {"Franklin", "Davis", "Rodriquez", "Black", "McTavish", "Coleman",
        "Escobito", "Schroeder", "Estaban", "Carter", "Leary", "Douglas", "Ortega", "Stevens", "Jenkins"};
    private static final String[] STREET = {"Liberty St.", "Cardinal Ave.", "Commerce St.", "Friendly St.",
        "S. Fair Way", "N. Lake St.", "Oak Blvd.", "Maple St.", "Blackhawk Trail", "Independence La."};
    private static final String[] CITY = {"Madison", "Sun Prairie", "McFarland", "Windsor", "Monona",
        "Waunakee", "Middleton"};
    private static final String[] PET = {"Leo", "Basil", "Rosy", "Jewel", "Iggy", "George", "Samantha",
        "Max", "Lucky", "Mulligan", "Freddy", "Sly", "Bella", "Milo", "Coco"};
    private static final String[] REASON = {"rabies shot", "neutered", "spayed", "checkup", "dental cleaning",
        "vaccination", "limping", "allergy", "ear infection"};
    private static final int BATCH = 500;

    private final DataSource dataSource;
    private final JdbcTemplate jdbc;
    private final int owners;
    private final long seed;

    public DatabaseSeeder(DataSource dataSource, JdbcTemplate jdbc, @Value("${petclinic.owners:2000}") int owners,
                          @Value("${petclinic.seed:42}") long seed) {
        this.dataSource = dataSource;
        this.jdbc = jdbc;
        this.owners = owners;
        this.seed = seed;
    }

    @Override
    public void afterPropertiesSet() {
        ResourceDatabasePopulator populator = new ResourceDatabasePopulator(
            new ClassPathResource("db/schema.sql"), new ClassPathResource("db/data.sql"));
        populator.setSqlScriptEncoding("UTF-8");
        DatabasePopulatorUtils.execute(populator, dataSource);
        Integer have = jdbc.queryForObject("SELECT COUNT(*) FROM owners", Integer.class);
        generate(have == null ? 0 : have);
    }

    private void generate(int have) {
        Random r = new Random(seed);
        List<Object[]> ownerRows = new ArrayList<>();
        List<Object[]> petRows = new ArrayList<>();
        List<Object[]> visitRows = new ArrayList<>();
        Integer maxPet = jdbc.queryForObject("SELECT COALESCE(MAX(id), 0) FROM pets", Integer.class);
        int petId = maxPet == null ? 0 : maxPet;
        for (int id = have + 1; id <= owners; id++) {
            ownerRows.add(new Object[] {id, FIRST[r.nextInt(FIRST.length)], LAST[r.nextInt(LAST.length)],
                (100 + r.nextInt(9000)) + " " + STREET[r.nextInt(STREET.length)], CITY[r.nextInt(CITY.length)],
                String.format(Locale.ROOT, "608555%04d", r.nextInt(10000))});
            int nPets = 1 + r.nextInt(3);
            for (int p = 0; p < nPets; p++) {
                petId++;
                int nVisits = r.nextInt(4);
                petRows.add(new Object[] {petId, PET[r.nextInt(PET.length)], Date.valueOf(LocalDate.of(
                    2010 + r.nextInt(14), 1 + r.nextInt(12), 1 + r.nextInt(28))), 1 + r.nextInt(6), id, nVisits});
                for (int v = 0; v < nVisits; v++) {
                    visitRows.add(new Object[] {petId, Date.valueOf(LocalDate.of(2020 + r.nextInt(5),
                        1 + r.nextInt(12), 1 + r.nextInt(28))), REASON[r.nextInt(REASON.length)]});
                }
            }
            if (ownerRows.size() >= BATCH) flush(ownerRows, petRows, visitRows);
        }
        flush(ownerRows, petRows, visitRows);
        // identity columns continue after the explicit ids
        jdbc.execute("ALTER TABLE owners ALTER COLUMN id RESTART WITH " + (Math.max(owners, have) + 1));
        jdbc.execute("ALTER TABLE pets ALTER COLUMN id RESTART WITH " + (petId + 1));
    }

    private void flush(List<Object[]> ownerRows, List<Object[]> petRows, List<Object[]> visitRows) {
        jdbc.batchUpdate("INSERT INTO owners (id, first_name, last_name, address, city, telephone) "
            + "VALUES (?, ?, ?, ?, ?, ?)", ownerRows);
        jdbc.batchUpdate("INSERT INTO pets (id, name, birth_date, type_id, owner_id, visit_count) "
            + "VALUES (?, ?, ?, ?, ?, ?)", petRows);
        jdbc.batchUpdate("INSERT INTO visits (pet_id, visit_date, description) VALUES (?, ?, ?)", visitRows);
        ownerRows.clear();
        petRows.clear();
        visitRows.clear();
    }
}

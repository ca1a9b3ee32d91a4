package io.firecracer.petclinic.system;

import javax.sql.DataSource;
import org.springframework.context.annotation.Bean;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.jdbc.core.namedparam.NamedParameterJdbcTemplate;
import org.springframework.jdbc.datasource.DataSourceTransactionManager;
import org.springframework.stereotype.Component;
import org.springframework.transaction.PlatformTransactionManager;

/**
 * The database: H2 in memory behind H2's connection pool (closed and reopened around a checkpoint:
 * {@link CracDataSource}), JdbcTemplates and a DataSource transaction manager. A {@code @Component}
 * with "lite" {@code @Bean} methods, not a {@code @Configuration} class: Debian's repackaged CGLIB cannot
 * subclass configuration classes (beans get their dependencies as method parameters instead of through
 * intercepted calls).
 */
@Component
public class DataConfig {
    @Bean(destroyMethod = "dispose")
    public CracDataSource dataSource() {
        return new CracDataSource("jdbc:h2:mem:petclinic;DB_CLOSE_DELAY=-1", 16);
    }

    @Bean
    public JdbcTemplate jdbcTemplate(DataSource dataSource) { return new JdbcTemplate(dataSource); }

    @Bean
    public NamedParameterJdbcTemplate namedParameterJdbcTemplate(JdbcTemplate jdbcTemplate) {
        return new NamedParameterJdbcTemplate(jdbcTemplate);
    }

    @Bean
    public PlatformTransactionManager transactionManager(DataSource dataSource) {
        return new DataSourceTransactionManager(dataSource);
    }
}

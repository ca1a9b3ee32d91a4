package io.firecracer.petclinic.system;

import java.io.PrintWriter;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.SQLFeatureNotSupportedException;
import java.util.logging.Logger;
import javax.sql.DataSource;
import org.crac.Context;
import org.crac.Core;
import org.crac.Resource;
import org.h2.jdbcx.JdbcConnectionPool;

/**
 * The application's DataSource: H2's connection pool, closed before a checkpoint and opened anew after a
 * restore, through CRaC's {@code org.crac} API (what an application does with its database pool so that
 * no connection is in the checkpoint). The in-memory database itself stays ({@code DB_CLOSE_DELAY=-1}).
 *
 * <p>Between the two, {@link #getConnection()} waits (up to {@value #WAIT_MS} ms) for the pool to be back.
 * Prints {@code crac: beforeCheckpoint datasource …} and {@code crac: afterRestore datasource …} on stdout
 * (the guest's console). Registered with the global context in the constructor; Spring keeps the bean,
 * and so the resource, alive.
 */
public final class CracDataSource implements DataSource, Resource {
    static final long WAIT_MS = 60_000;

    private final String url;
    private final int maxConnections;
    private JdbcConnectionPool pool;  // null while checkpointed
    private int generation;

    public CracDataSource(String url, int maxConnections) {
        this.url = url;
        this.maxConnections = maxConnections;
        this.pool = open();
        Core.getGlobalContext().register(this);
    }

    private JdbcConnectionPool open() {
        JdbcConnectionPool p = JdbcConnectionPool.create(url, "sa", "");
        p.setMaxConnections(maxConnections);
        return p;
    }

    private synchronized JdbcConnectionPool current() throws SQLException {
        long deadline = System.currentTimeMillis() + WAIT_MS;
        while (pool == null) {
            long left = deadline - System.currentTimeMillis();
            if (left <= 0) {
                throw new SQLException("the connection pool is closed for a checkpoint");
            }
            try {
                wait(left);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new SQLException("interrupted waiting for the connection pool", e);
            }
        }
        return pool;
    }

    @Override
    public void beforeCheckpoint(Context<? extends Resource> context) {
        JdbcConnectionPool p;
        synchronized (this) {
            p = pool;
            pool = null;
        }
        if (p == null) {
            System.out.println("crac: beforeCheckpoint datasource: already closed");
            return;
        }
        int active = p.getActiveConnections();
        p.dispose();
        System.out.printf("crac: beforeCheckpoint datasource: closed the H2 pool (%d active connection%s)%n",
            active, active == 1 ? "" : "s");
        System.out.flush();
    }

    @Override
    public void afterRestore(Context<? extends Resource> context) {
        synchronized (this) {
            if (pool == null) {
                pool = open();
                generation++;
            }
            notifyAll();
        }
        System.out.printf("crac: afterRestore datasource: reopened the H2 pool (pool %d)%n", generation);
        System.out.flush();
    }

    /** Spring's destroy method. */
    public synchronized void dispose() {
        if (pool != null) {
            pool.dispose();
            pool = null;
        }
    }

    @Override
    public Connection getConnection() throws SQLException {
        return current().getConnection();
    }

    @Override
    public Connection getConnection(String user, String password) throws SQLException {
        return current().getConnection(user, password);
    }

    @Override
    public PrintWriter getLogWriter() {
        return null;
    }

    @Override
    public void setLogWriter(PrintWriter out) {
    }

    @Override
    public void setLoginTimeout(int seconds) {
    }

    @Override
    public int getLoginTimeout() {
        return 0;
    }

    @Override
    public Logger getParentLogger() throws SQLFeatureNotSupportedException {
        throw new SQLFeatureNotSupportedException();
    }

    @Override
    public <T> T unwrap(Class<T> iface) throws SQLException {
        if (iface.isInstance(this)) {
            return iface.cast(this);
        }
        throw new SQLException("not a wrapper of " + iface.getName());
    }

    @Override
    public boolean isWrapperFor(Class<?> iface) {
        return iface.isInstance(this);
    }

    @Override
    public String toString() {
        return "petclinic datasource (H2 pool, " + url + ")";
    }
}

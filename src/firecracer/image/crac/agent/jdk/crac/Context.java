package jdk.crac;

/**
 * A {@link Resource} that notifies other resources registered with it. The global one is
 * {@link Core#getGlobalContext()}.
 */
public abstract class Context<R extends Resource> implements Resource {
    /** For subclasses. */
    protected Context() {
    }

    @Override
    public abstract void beforeCheckpoint(Context<? extends Resource> context) throws CheckpointException;

    @Override
    public abstract void afterRestore(Context<? extends Resource> context) throws RestoreException;

    /**
     * Registers a resource; the context keeps only a weak reference to it (the caller keeps it alive).
     *
     * @throws NullPointerException if {@code resource} is null
     */
    public abstract void register(R resource);
}

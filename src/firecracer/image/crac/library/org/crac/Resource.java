package org.crac;

/**
 * An object that acts around a checkpoint: {@link #beforeCheckpoint} closes what must not be in it,
 * {@link #afterRestore} reopens it. Same shape as CRaC's {@code org.crac.Resource}.
 */
public interface Resource {
    void beforeCheckpoint(Context<? extends Resource> context) throws Exception;

    void afterRestore(Context<? extends Resource> context) throws Exception;
}

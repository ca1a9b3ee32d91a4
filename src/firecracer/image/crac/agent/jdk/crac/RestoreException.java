package jdk.crac;

/** A restore notification failed; the resources' exceptions are attached as suppressed exceptions. */
public class RestoreException extends Exception {
    private static final long serialVersionUID = 1L;

    public RestoreException() {
        super();
    }

    public RestoreException(String message) {
        super(message);
    }
}

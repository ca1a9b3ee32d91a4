package io.firecracer.crac;

/** The agent's console lines: {@code firecracer-crac: ...} on stdout (the guest's console). */
final class Log {
    private Log() {
    }

    static void info(String msg) {
        System.out.println("firecracer-crac: " + msg);
        System.out.flush();
    }
}

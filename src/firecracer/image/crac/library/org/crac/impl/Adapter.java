package org.crac.impl;

import java.lang.ref.WeakReference;
import java.lang.reflect.InvocationHandler;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.util.Collections;
import java.util.Map;
import java.util.WeakHashMap;
import org.crac.Resource;

/**
 * Makes an {@code org.crac.Resource} look like the implementation's {@code Resource}: a dynamic proxy of
 * that interface whose handler forwards the two notifications.
 *
 * <p>Lifetimes follow the application's resource, as with CRaC's library: the implementation holds the
 * proxy weakly, so the adapter keeps the proxy strongly and a weak map keyed by the application's resource
 * keeps the adapter; the adapter holds the resource itself only weakly, so when the application drops the
 * resource, the adapter and proxy go too. Between {@code beforeCheckpoint} and {@code afterRestore} the
 * adapter holds the resource strongly (it must still be there to be reopened).
 */
final class Adapter extends WeakReference<Resource> implements InvocationHandler {
    private static final Map<Resource, Adapter> ALIVE = Collections.synchronizedMap(new WeakHashMap<>());

    private Object proxy;
    private Resource pinned;

    private Adapter(Resource r) {
        super(r);
    }

    static Object create(Implementation impl, Resource r) {
        Adapter a = new Adapter(r);
        a.proxy = Proxy.newProxyInstance(Adapter.class.getClassLoader(), new Class<?>[] {impl.resource}, a);
        ALIVE.put(r, a);
        return a.proxy;
    }

    @Override
    public Object invoke(Object self, Method m, Object[] args) throws Throwable {
        switch (m.getName()) {
            case "beforeCheckpoint": {
                Resource r = get();
                pinned = r;
                if (r != null) {
                    r.beforeCheckpoint(Global.INSTANCE);
                }
                return null;
            }
            case "afterRestore": {
                Resource r = get();
                pinned = null;
                if (r != null) {
                    r.afterRestore(Global.INSTANCE);
                }
                return null;
            }
            case "toString":
                return toString();
            case "hashCode":
                return System.identityHashCode(self);
            case "equals":
                return self == args[0];
            default:
                throw new UnsupportedOperationException(m.toString());
        }
    }

    @Override
    public String toString() {
        Resource r = get();
        return r == null ? "org.crac resource (collected)" : String.valueOf(r);
    }
}

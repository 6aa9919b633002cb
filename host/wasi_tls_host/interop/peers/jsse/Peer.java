// Peer: a TLS peer on Java's JSSE (the JDK's own TLS implementation) for the interop matrix.
//
// One JVM serves many cases: it reads commands on stdin, one a line, and answers on stdout
// with JSON lines tagged with the command's id (starting a JVM per case would cost more
// than the case). The flags are the Go peer's (gotls/main.go); key exchange groups are a
// JVM-wide setting in JDK 17 (-Djdk.tls.namedGroups), so the matrix starts one JVM per
// group setting.
//
//     ID server FLAGS...   listen on 127.0.0.1, a free port:
//                          {"event":"listening","id":ID,"addr":"127.0.0.1:PORT"};
//                          then per connection {"event":"connection","id":ID,"side":"server",...}
//                          and, for an echo connection, {"event":"end","id":ID,...}
//     ID stop              close server ID: {"event":"stopped","id":ID}
//     ID client FLAGS...   connect (-count N times); per connection a "connection" line,
//                          then {"event":"done","id":ID}
//
// Fields as the Go peer's: ok, error, version (TLSv1.3), alpn, server_name, peer_subject,
// reply, received, end (close_notify or the error), handshake_ms. "resumed" is absent: JSSE
// does not say whether a TLS 1.3 session was resumed.
//
// Standard library only: javac Peer.java; java Peer.

import java.io.*;
import java.net.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.security.*;
import java.security.cert.*;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.*;
import java.util.concurrent.*;
import javax.net.ssl.*;

public class Peer {
    static final Object OUT = new Object();
    static final Map<String, ServerSocket> SERVERS = new ConcurrentHashMap<>();

    static void emit(Map<String, Object> record) {
        StringBuilder b = new StringBuilder("{");
        for (Map.Entry<String, Object> e : record.entrySet()) {
            if (b.length() > 1) b.append(',');
            b.append(quote(e.getKey())).append(':');
            Object v = e.getValue();
            if (v instanceof String) b.append(quote((String) v));
            else b.append(v);
        }
        b.append('}');
        synchronized (OUT) {
            System.out.println(b);
            System.out.flush();
        }
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    static Map<String, Object> record(String event, String id) {
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("event", event);
        r.put("id", id);
        return r;
    }

    static Map<String, String> flags(List<String> args) {
        Map<String, String> f = new HashMap<>();
        for (int i = 0; i < args.size(); i++) {
            String a = args.get(i).replaceFirst("^-+", "");
            if (a.contains("=")) {
                f.put(a.substring(0, a.indexOf('=')), a.substring(a.indexOf('=') + 1));
            } else if (a.equals("read-to-end")) {
                f.put(a, "true");
            } else if (i + 1 < args.size()) {
                f.put(a, args.get(++i));
            }
        }
        return f;
    }

    static List<X509Certificate> certificates(String path) throws Exception {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        List<X509Certificate> chain = new ArrayList<>();
        try (InputStream in = new FileInputStream(path)) {
            for (java.security.cert.Certificate c : cf.generateCertificates(in)) chain.add((X509Certificate) c);
        }
        return chain;
    }

    static PrivateKey key(String path) throws Exception {
        String pem = new String(Files.readAllBytes(Paths.get(path)), StandardCharsets.US_ASCII);
        String body = pem.replaceAll("-----[^-]+-----", "").replaceAll("\\s", "");
        byte[] der = Base64.getDecoder().decode(body);
        for (String algorithm : new String[] {"EC", "RSA", "Ed25519", "RSASSA-PSS"}) {
            try {
                return KeyFactory.getInstance(algorithm).generatePrivate(new PKCS8EncodedKeySpec(der));
            } catch (Exception ignored) {
            }
        }
        throw new IllegalArgumentException("cannot read the key in " + path + " (PKCS#8 EC, RSA or Ed25519)");
    }

    static SSLContext context(Map<String, String> f) throws Exception {
        char[] none = new char[0];
        KeyManager[] keys = null;
        if (f.containsKey("cert")) {
            KeyStore ks = KeyStore.getInstance("PKCS12");
            ks.load(null, none);
            ks.setKeyEntry("first", key(f.get("key")), none, certificates(f.get("cert")).toArray(new X509Certificate[0]));
            if (f.containsKey("cert2")) {
                ks.setKeyEntry("second", key(f.get("key2")), none, certificates(f.get("cert2")).toArray(new X509Certificate[0]));
            }
            // PKIX picks the certificate that matches the client's server name.
            KeyManagerFactory kmf = KeyManagerFactory.getInstance("PKIX");
            kmf.init(ks, none);
            keys = kmf.getKeyManagers();
        }
        TrustManager[] trust = null;
        if (f.containsKey("ca")) {
            KeyStore ts = KeyStore.getInstance("PKCS12");
            ts.load(null, none);
            int n = 0;
            for (X509Certificate c : certificates(f.get("ca"))) ts.setCertificateEntry("ca" + (n++), c);
            TrustManagerFactory tmf = TrustManagerFactory.getInstance("PKIX");
            tmf.init(ts);
            trust = tmf.getTrustManagers();
        }
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(keys, trust, null);
        return ctx;
    }

    static String[] protocols(Map<String, String> f) {
        List<String> out = new ArrayList<>();
        for (String v : new String[] {"1.2", "1.3"}) {
            if (v.compareTo(f.getOrDefault("min", "1.2")) >= 0 && v.compareTo(f.getOrDefault("max", "1.3")) <= 0) out.add("TLSv" + v);
        }
        return out.toArray(new String[0]);
    }

    static void describe(Map<String, Object> r, SSLSocket s, boolean server) {
        SSLSession session = s.getSession();
        r.put("version", session.getProtocol());
        r.put("suite", session.getCipherSuite());
        String alpn = s.getApplicationProtocol();
        r.put("alpn", alpn == null ? "" : alpn);
        try {
            java.security.cert.Certificate[] peer = session.getPeerCertificates();
            r.put("peer_subject", ((X509Certificate) peer[0]).getSubjectX500Principal().getName());
        } catch (SSLPeerUnverifiedException e) {
            r.put("peer_subject", "");
        }
        if (server && session instanceof ExtendedSSLSession) {
            for (SNIServerName name : ((ExtendedSSLSession) session).getRequestedServerNames()) {
                if (name instanceof SNIHostName) r.put("server_name", ((SNIHostName) name).getAsciiName());
            }
        }
    }

    static String ending(Throwable e) {
        return e == null ? "close_notify" : e.getClass().getSimpleName() + ": " + e.getMessage();
    }

    static void server(String id, Map<String, String> f) throws Exception {
        SSLContext ctx = context(f);
        ServerSocket listener = new ServerSocket();
        listener.bind(new InetSocketAddress("127.0.0.1", 0));
        SERVERS.put(id, listener);
        Map<String, Object> listening = record("listening", id);
        listening.put("addr", "127.0.0.1:" + listener.getLocalPort());
        emit(listening);
        Thread t = new Thread(() -> {
            while (!listener.isClosed()) {
                Socket raw;
                try {
                    raw = listener.accept();
                } catch (IOException e) {
                    return;
                }
                new Thread(() -> serveOne(id, ctx, f, raw)).start();
            }
        });
        t.setDaemon(true);
        t.start();
    }

    static void serveOne(String id, SSLContext ctx, Map<String, String> f, Socket raw) {
        Map<String, Object> r = record("connection", id);
        r.put("side", "server");
        r.put("ok", false);
        r.put("peer", raw.getRemoteSocketAddress().toString().replaceFirst("^/", ""));
        String then = f.getOrDefault("then", "echo");
        try {
            raw.setSoTimeout((int) (timeout(f) * 1000));
            SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(raw, null, raw.getPort(), false);
            s.setUseClientMode(false);
            s.setEnabledProtocols(protocols(f));
            SSLParameters p = s.getSSLParameters();
            if (f.containsKey("alpn")) p.setApplicationProtocols(f.get("alpn").split(","));
            String auth = f.getOrDefault("client-auth", "none");
            if (auth.equals("require")) p.setNeedClientAuth(true);
            else if (!auth.equals("none")) p.setWantClientAuth(true);
            s.setSSLParameters(p);
            long started = System.nanoTime();
            s.startHandshake();
            r.put("handshake_ms", (System.nanoTime() - started) / 1e6);
            r.put("ok", true);
            describe(r, s, true);
            emit(r);
            OutputStream out = s.getOutputStream();
            InputStream in = s.getInputStream();
            if (then.equals("close") || then.equals("truncate")) {
                out.write("x".repeat(Integer.parseInt(f.getOrDefault("bytes", "1000"))).getBytes(StandardCharsets.US_ASCII));
                out.flush();
                if (then.equals("close")) s.close();
                else raw.close(); // no close_notify
                return;
            }
            if (then.equals("http")) {
                byte[] head = new byte[65536];
                int n = 0;
                while (n < head.length) {
                    int got = in.read(head, n, head.length - n);
                    if (got < 0) break;
                    n += got;
                    if (new String(head, 0, n, StandardCharsets.ISO_8859_1).contains("\r\n\r\n")) break;
                }
                out.write("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n".getBytes(StandardCharsets.US_ASCII));
                out.flush();
                s.close();
                return;
            }
            Throwable error = null;
            try {
                BufferedReader lines = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8));
                String line;
                while ((line = lines.readLine()) != null) {
                    out.write((line + "\n").getBytes(StandardCharsets.UTF_8));
                    out.flush();
                }
            } catch (IOException e) {
                error = e;
            }
            Map<String, Object> end = record("end", id);
            end.put("side", "server");
            end.put("peer", r.get("peer"));
            end.put("ok", true);
            end.put("end", ending(error));
            emit(end);
            s.close();
        } catch (Exception e) {
            if (!(Boolean) r.get("ok")) {
                r.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
                emit(r);
            }
        } finally {
            try {
                raw.close();
            } catch (IOException ignored) {
            }
        }
    }

    static double timeout(Map<String, String> f) {
        return Double.parseDouble(f.getOrDefault("timeout", "10s").replace("s", ""));
    }

    static void client(String id, Map<String, String> f) throws Exception {
        SSLContext ctx = context(f); // one context per command: its session cache lets the second connection resume
        String[] target = f.get("connect").split(":");
        String name = f.getOrDefault("server-name", target[0]);
        int count = Integer.parseInt(f.getOrDefault("count", "1"));
        for (int i = 0; i < count; i++) {
            Map<String, Object> r = record("connection", id);
            r.put("side", "client");
            r.put("ok", false);
            r.put("peer", f.get("connect"));
            Socket raw = new Socket();
            try {
                raw.connect(new InetSocketAddress(target[0], Integer.parseInt(target[1])), (int) (timeout(f) * 1000));
                raw.setSoTimeout((int) (timeout(f) * 1000));
                SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(raw, name, Integer.parseInt(target[1]), false);
                s.setEnabledProtocols(protocols(f));
                SSLParameters p = s.getSSLParameters();
                p.setServerNames(List.of(new SNIHostName(name)));
                p.setEndpointIdentificationAlgorithm("HTTPS");
                if (f.containsKey("alpn")) p.setApplicationProtocols(f.get("alpn").split(","));
                s.setSSLParameters(p);
                long started = System.nanoTime();
                s.startHandshake();
                r.put("handshake_ms", (System.nanoTime() - started) / 1e6);
                r.put("ok", true);
                describe(r, s, false);
                InputStream in = s.getInputStream();
                if (f.containsKey("send")) {
                    s.getOutputStream().write((f.get("send") + "\n").getBytes(StandardCharsets.UTF_8));
                    s.getOutputStream().flush();
                    StringBuilder reply = new StringBuilder();
                    int c;
                    while ((c = in.read()) >= 0 && c != '\n') reply.append((char) c);
                    r.put("reply", reply.toString());
                }
                if (f.containsKey("read-to-end")) {
                    long received = 0;
                    Throwable error = null;
                    byte[] buffer = new byte[65536];
                    try {
                        int n;
                        while ((n = in.read(buffer)) >= 0) received += n;
                    } catch (IOException e) {
                        error = e;
                    }
                    r.put("received", received);
                    r.put("end", ending(error));
                }
                if (f.getOrDefault("then", "close").equals("close")) s.close();
            } catch (Exception e) {
                r.put("ok", false);
                r.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
            } finally {
                raw.close(); // after s.close() this only closes the socket; alone, no close_notify
            }
            emit(r);
        }
    }

    public static void main(String[] argv) throws Exception {
        BufferedReader commands = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        ExecutorService clients = Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        emit(record("ready", "-"));
        String line;
        while ((line = commands.readLine()) != null) {
            List<String> words = new ArrayList<>(Arrays.asList(line.trim().split("\t")));
            if (words.size() < 2) continue;
            String id = words.remove(0);
            String verb = words.remove(0);
            Map<String, String> f = flags(words);
            try {
                if (verb.equals("server")) {
                    server(id, f);
                } else if (verb.equals("stop")) {
                    ServerSocket s = SERVERS.remove(id);
                    if (s != null) s.close();
                    emit(record("stopped", id));
                } else if (verb.equals("client")) {
                    clients.submit(() -> {
                        try {
                            client(id, f);
                        } catch (Exception e) {
                            Map<String, Object> r = record("connection", id);
                            r.put("ok", false);
                            r.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
                            emit(r);
                        }
                        emit(record("done", id));
                    });
                }
            } catch (Exception e) {
                Map<String, Object> r = record("failed", id);
                r.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
                emit(r);
            }
        }
        System.exit(0);
    }
}

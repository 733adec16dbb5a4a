/*
 * A bar feed as a standard Java Kafka client writes it: JSON bars to a topic with a chosen
 * compression.type (none, gzip, snappy, lz4, zstd), through kafka-clients, the client of the Kafka
 * distribution scripts/services runs. Nothing is built: the JDK's single-file launcher compiles it
 * in memory, with the jars scripts/services caches on the class path:
 *
 *   java -cp "$(ls -d .cache/kafka/jars-*)/*" scripts/kafka/BarProducer.java \
 *       --bootstrap 127.0.0.1:9092 --topic bars --compression zstd [BAR ...] < bars.jsonl
 *
 * Bars come from the arguments after the options, else from stdin, one per line: a JSON bar (the
 * key is its "symbol") or KEY<TAB>JSON. Records are batched as the client does by default
 * (linger.ms 20 unless --linger-ms), with acks=all and idempotence. Prints "sent N" on success; a
 * failed send prints the error and exits 1.
 */

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class BarProducer {
    private static final Pattern SYMBOL = Pattern.compile("\"symbol\"\\s*:\\s*\"([^\"]*)\"");

    public static void main(String[] args) throws Exception {
        String bootstrap = null;
        String topic = null;
        String compression = "none";
        String linger = "20";
        List<String> bars = new ArrayList<>();
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--bootstrap" -> bootstrap = args[++i];
                case "--topic" -> topic = args[++i];
                case "--compression" -> compression = args[++i];
                case "--linger-ms" -> linger = args[++i];
                default -> bars.add(args[i]);
            }
        }
        if (bootstrap == null || topic == null) {
            System.err.println("usage: BarProducer --bootstrap HOST:PORT --topic TOPIC [--compression "
                    + "none|gzip|snappy|lz4|zstd] [--linger-ms MS] [BAR ...] (bars from stdin without BARs)");
            System.exit(64);
        }
        if (bars.isEmpty()) {
            try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
                for (String line; (line = in.readLine()) != null; ) {
                    if (!line.isBlank()) {
                        bars.add(line);
                    }
                }
            }
        }

        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        props.put(ProducerConfig.LINGER_MS_CONFIG, linger);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

        List<Future<RecordMetadata>> acks = new ArrayList<>();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            for (String bar : bars) {
                String key;
                String value;
                int tab = bar.indexOf('\t');
                if (tab >= 0) {
                    key = bar.substring(0, tab);
                    value = bar.substring(tab + 1);
                } else {
                    Matcher m = SYMBOL.matcher(bar);
                    key = m.find() ? m.group(1) : null;
                    value = bar;
                }
                byte[] k = key == null ? null : key.getBytes(StandardCharsets.UTF_8);
                acks.add(producer.send(new ProducerRecord<>(topic, k, value.getBytes(StandardCharsets.UTF_8))));
            }
            producer.flush();
            for (Future<RecordMetadata> ack : acks) {
                ack.get();
            }
        } catch (Exception e) {
            System.err.println("producing to " + topic + " at " + bootstrap + " failed: " + e);
            System.exit(1);
        }
        System.out.println("sent " + acks.size() + " bars to " + topic + " (compression.type=" + compression + ")");
    }
}

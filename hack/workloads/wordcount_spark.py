"""Spark RDD wordcount, the Spark workload of hack/experiment.

    python wordcount_spark.py INPUT OUTDIR [PARTITIONS]

Runs on local[2] (two worker threads in one driver JVM, Python workers
forked by pyspark's daemon), counts whitespace-separated words of INPUT and
writes "word<TAB>count" lines as text part files under OUTDIR. Copied into
the bundle by hack/mkbundle-spark.
"""
import sys
import time

from pyspark import SparkConf, SparkContext


def main():
    inp, out = sys.argv[1], sys.argv[2]
    parts = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    conf = (
        SparkConf()
        .setMaster("local[2]")
        .setAppName("ferry-wordcount")
        .set("spark.ui.enabled", "false")
        .set("spark.driver.host", "127.0.0.1")
        .set("spark.driver.bindAddress", "127.0.0.1")
        .set("spark.local.dir", "/tmp/spark")
    )
    sc = SparkContext(conf=conf)
    sc.setLogLevel("WARN")
    t0 = time.time()
    counts = (
        sc.textFile("file://" + inp, parts)
        .flatMap(lambda line: line.split())
        .map(lambda w: (w, 1))
        .reduceByKey(lambda a, b: a + b, parts)
        .map(lambda kv: "%s\t%d" % kv)
    )
    counts.saveAsTextFile("file://" + out)
    print("wordcount done in %.1f s" % (time.time() - t0), flush=True)
    sc.stop()


if __name__ == "__main__":
    main()

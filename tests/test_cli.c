/* test_cli: option spellings, defaults, ranges, unknown flags, ignored flags, sizes. */
#include <string.h>

#include "cli.h"
#include "err.h"
#include "log.h"
#include "testlib.h"

static char err[QIE_ERR_LEN];
static int64_t bs;
static double lr;
static int flag;
static const char *name;
static CliStrs mods;
static const CliOpt opts[] = {
    {"train_batch_size", CLI_INT, &bs, "1", "batch", 1, 1e6},
    {"learning_rate", CLI_FLOAT, &lr, "1e-4", "lr", 0, 0},
    {"gradient_checkpointing", CLI_BOOL, &flag, "false", "gc", 0, 0},
    {"output_dir", CLI_STR, &name, "out", "dir", 0, 0},
    {"trainable_modules", CLI_STRS, &mods, NULL, "modules", 0, 0},
    {"report_to", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
    {"use_8bit_adam", CLI_IGNORED_FLAG, NULL, NULL, NULL, 0, 0},
};
static const CliSpec spec = {"qie-test", "[options]", NULL, opts, 7, 1};

static int parse_(int argc, char **argv) {
    const char *pos[1];
    int npos;
    return cli_parse(err, &spec, argc, argv, pos, &npos);
}

static void test_spellings(void) {
    char *a1[] = {"x", "--train_batch_size", "4", "--learning_rate=2e-5", "--gradient_checkpointing", "--output-dir", "o2",
                  "--trainable_modules", "a", "b", "--report_to", "tensorboard", "--use_8bit_adam"};
    CHECK_RC(parse_(13, a1), err);
    CHECK(bs == 4 && lr == 2e-5 && flag == 1 && !strcmp(name, "o2"));
    CHECK(mods.n == 2 && !strcmp(mods.v[1], "b"));
    char *a2[] = {"x"};
    CHECK_RC(parse_(1, a2), err);
    CHECK(bs == 1 && lr == 1e-4 && flag == 0 && !strcmp(name, "out") && mods.n == 0, "defaults are re-applied");
    char *a3[] = {"x", "--gradient_checkpointing=false", "--train-batch-size=1e2"};
    CHECK_RC(parse_(3, a3), err);
    CHECK(flag == 0 && bs == 100);
    char *a4[] = {"x", "positional", "--trainable_modules=x"};
    CHECK_RC(parse_(3, a4), err);
    CHECK(mods.n == 1);
}

static void test_errors(void) {
    char *a1[] = {"x", "--no_such_flag", "1"};
    CHECK(parse_(3, a1) == QIE_EINVAL && strstr(err, "--no_such_flag"), "%s", err);
    char *a2[] = {"x", "--train_batch_size", "0"};
    CHECK(parse_(3, a2) == QIE_EINVAL && strstr(err, "outside"), "%s", err);
    char *a3[] = {"x", "--train_batch_size", "two"};
    CHECK(parse_(3, a3) == QIE_EINVAL);
    char *a4[] = {"x", "--learning_rate"};
    CHECK(parse_(2, a4) == QIE_EINVAL && strstr(err, "needs a value"), "%s", err);
    char *a5[] = {"x", "--gradient_checkpointing=maybe"};
    CHECK(parse_(2, a5) == QIE_EINVAL);
    char *a6[] = {"x", "-q"};
    CHECK(parse_(2, a6) == QIE_EINVAL);
    char *a7[] = {"x", "p1", "p2"};
    CHECK(parse_(3, a7) == QIE_EINVAL);
}

static void test_sizes(void) {
    uint64_t v;
    CHECK(cli_parse_size("80GB", &v) == 0 && v == 80000000000ull);
    CHECK(cli_parse_size("10KiB", &v) == 0 && v == 10240);
    CHECK(cli_parse_size("5MB", &v) == 0 && v == 5000000);
    CHECK(cli_parse_size("123", &v) == 0 && v == 123);
    CHECK(cli_parse_size("1.5GiB", &v) == 0 && v == 1610612736ull);
    CHECK(cli_parse_size("12XB", &v) == QIE_EINVAL);
    CHECK(cli_parse_size("-1GB", &v) == QIE_EINVAL);
}

int main(void) {
    log_init("test");
    log_set_level(LOG_ERROR);
    TEST_RUN(test_spellings);
    TEST_RUN(test_errors);
    TEST_RUN(test_sizes);
    return TEST_DONE();
}

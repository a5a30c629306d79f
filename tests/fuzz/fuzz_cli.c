/*
 * Fuzz target: the command line.
 *
 * The input is an argument vector, its arguments separated by NUL bytes (argv[0] is "run"). It
 * goes through parse_options and, when that accepts it with --tokens, through parse_token_list
 * (a vocabulary of 512 and a context of 64). Checks:
 *   - a usage error is reported on stderr, starting "run: ", and an "unknown option" or "needs a
 *     value" message names an option (an argument starting with '-'), not MODEL or argv[0]; an
 *     "unknown option" is none of run's own;
 *   - getopt keeps state between calls: after the input, parse_options runs once more on an
 *     ordinary command line, which must parse to exactly what it says. The input's argument
 *     vector stays allocated until then, so that a pointer getopt kept into it reads the input's
 *     bytes (freed memory would read whatever the allocator left there).
 * Before each input getopt is fully reset (optind = 0 makes glibc reinitialise), so that an input
 * reproduces on its own whatever ran before it.
 *
 * FUZZ_SKIP=getopt-state,option-name (either or both) turns a check off, for exploring beyond a
 * finding that is recorded in tests/fuzz/regressions/ and not fixed yet.
 */

#define RUN_NO_MAIN
#include "../../run.c"

#include "fuzz_common.h"

#define FUZZ_MAX_ARGS 64

static bool check_getopt_state = true, check_option_name = true;

// argv[0] = "run", then the input's NUL-separated pieces (a trailing empty piece is dropped).
static char **split_arguments(const uint8_t *data, size_t size, int *argc, char **storage) {
    *storage = malloc(size + 1);
    memcpy(*storage, data, size);
    (*storage)[size] = '\0';
    char **argv = calloc(FUZZ_MAX_ARGS + 2, sizeof(char *));
    char *run_name = malloc(4);
    memcpy(run_name, "run", 4);
    argv[0] = run_name;
    int n = 1;
    size_t start = 0;
    for (size_t i = 0; i <= size && n <= FUZZ_MAX_ARGS; i++) {
        if (i == size ? i > start : (*storage)[i] == '\0') {
            argv[n++] = *storage + start;
            start = i + 1;
        }
    }
    *argc = n;
    return argv;
}

static void free_arguments(char **argv, char *storage) {
    free(argv[0]);
    free(argv);
    free(storage);
}

static void reset_getopt(void) {
    static char name[] = "reset";
    char *argv[] = {name, NULL};
    optind = 0;
    opterr = 0;
    while (getopt_long(1, argv, "", long_options, NULL) != -1) {
    }
}

// parse_options with stderr captured; returns its result and what it wrote (free it).
static int parse_captured(int argc, char **argv, Options *o, char **message) {
    size_t size;
    FILE *saved = stderr;
    stderr = open_memstream(message, &size);
    if (stderr == NULL) {
        abort();
    }
    int parsed = parse_options(argc, argv, o);
    fclose(stderr);
    stderr = saved;
    return parsed;
}

// The option an "unknown option" or "needs a value" message names: its first '...' quotation,
// else its first word after "run: "; NULL for other messages (free it).
static char *named_option(const char *message) {
    // Only run's own option messages, "run: 'NAME' is an unknown option (see run --help)" and
    // "run: 'NAME' needs a value (...)", matched whole from both ends: NAME is the user's text
    // and may itself contain quotes or those very words.
    static const char *const endings[] = {"' is an unknown option (see run --help)\n",
                                          "' needs a value (see run --help)\n"};
    size_t length = strlen(message);
    if (strncmp(message, "run: '", 6) != 0) {
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        size_t tail = strlen(endings[i]);
        if (length >= 6 + tail && strcmp(message + length - tail, endings[i]) == 0) {
            return strndup(message + 6, length - tail - 6);
        }
    }
    return NULL;
}

// Whether name is one of run's own options, "-q" or "--quiet" say.
static bool is_known_option(const char *name) {
    if (name[0] == '-' && name[1] != '-' && name[1] != '\0' && name[2] == '\0') {
        return strchr("pntkszqh", name[1]) != NULL;
    }
    for (const struct option *o = long_options; o->name != NULL; o++) {
        if (strncmp(name, "--", 2) == 0 && strcmp(name + 2, o->name) == 0) {
            return true;
        }
    }
    return false;
}

static void check_usage_message(const char *message) {
    size_t length = strlen(message);
    if (length == 0 || strncmp(message, "run: ", 5) != 0 || message[length - 1] != '\n') {
        fuzz_fail("usage error '%s' is not a 'run: ' line", message);
    }
    if (!check_option_name) {
        return;
    }
    char *name = named_option(message);
    if (name != NULL && name[0] != '-') {
        fuzz_fail("usage error '%.*s' names '%s', which is no option", (int)strcspn(message, "\n"),
                  message, name);
    }
    if (name != NULL && strstr(message, "unknown option") != NULL && is_known_option(name)) {
        fuzz_fail("usage error '%.*s' calls '%s' unknown, which is one of run's options",
                  (int)strcspn(message, "\n"), message, name);
    }
    free(name);
}

static void check_ordinary_command_line(void) {
    static const uint8_t line[] = "model.bin\0-n\0"
                                  "5\0-q";
    int argc;
    char *storage;
    char **argv = split_arguments(line, sizeof line - 1, &argc, &storage);
    Options o;
    char *message;
    int parsed = parse_captured(argc, argv, &o, &message);
    if (parsed != 0 || o.model_path == NULL || strcmp(o.model_path, "model.bin") != 0 ||
        o.steps != 5 || !o.quiet || o.prompt != NULL || o.token_list != NULL || o.mode != MODE_GENERATE ||
        o.emit_ids) {
        fuzz_fail("after the input, 'run model.bin -n 5 -q' parsed to %d: model %s, steps %d, "
                  "quiet %d, prompt %s, tokens %s; stderr '%s'",
                  parsed, o.model_path ? o.model_path : "(none)", o.steps, o.quiet,
                  o.prompt ? o.prompt : "(none)", o.token_list ? o.token_list : "(none)", message);
    }
    free(message);
    free_arguments(argv, storage);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_silence_stdio();
    const char *skip = getenv("FUZZ_SKIP");
    if (skip != NULL) {
        check_getopt_state = strstr(skip, "getopt-state") == NULL;
        check_option_name = strstr(skip, "option-name") == NULL;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int argc;
    char *storage;
    char **argv = split_arguments(data, size, &argc, &storage);
    reset_getopt();
    Options o;
    char *message;
    int parsed = parse_captured(argc, argv, &o, &message);
    if (parsed < -1 || parsed > 1) {
        fuzz_fail("parse_options returned %d", parsed);
    }
    if (parsed == -1) {
        check_usage_message(message);
    }
    if (parsed == 0) {
        if (o.model_path == NULL) {
            fuzz_fail("parse_options accepted a command line without MODEL");
        }
        if (o.token_list != NULL) {
            int ids[65];
            int n = parse_token_list(o.token_list, 512, ids, 65);
            if (n < -1 || n == 0 || n > 65) {
                fuzz_fail("parse_token_list returned %d", n);
            }
            for (int i = 0; i < n; i++) {
                if (ids[i] < 0 || ids[i] >= 512) {
                    fuzz_fail("parse_token_list gave id %d", ids[i]);
                }
            }
        }
    }
    free(message);
    if (check_getopt_state) {
        check_ordinary_command_line();
    }
    free_arguments(argv, storage);
    return 0;
}

/* pkv — the pagedkv program: dispatch to one subcommand per file. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const char usage[] =
    "usage: pkv <command> [options]\n"
    "\n"
    "commands:\n"
    "  sim    simulate a continuous-batching LLM server whose every KV operation is\n"
    "         a real pagedkv call (the default workload, or --trace FILE)\n"
    "  attn   run the attention oracle (or the fast path) on NumPy .npy files\n"
    "  info   version, build flags, CPU features and the kernel each dtype uses\n"
    "\n"
    "pkv <command> --help describes a command's options.\n"
    "pkv --version prints the library version.\n";

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(usage, stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("pkv %s\n", pkv_version());
        return 0;
    }
    if (!strcmp(cmd, "sim")) return cmd_sim(argc - 1, argv + 1);
    if (!strcmp(cmd, "attn")) return cmd_attn(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 1, argv + 1);
    fprintf(stderr, "pkv: unknown command '%s'\n\n%s", cmd, usage);
    return EXIT_USAGE;
}

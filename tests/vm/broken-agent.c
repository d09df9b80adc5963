/*
 * The VM suite's deliberately broken release (tests/vm/release.rs): built
 * as all three programs of a release, it reports the release's version, as
 * the release build and the root helper's pre-switch check ask, and fails
 * at everything else. Installed by an update, the agent's units never
 * become ready, so the root helper must roll back (scenario 5).
 */
#include <stdio.h>
#include <string.h>

#ifndef VERSION
#error "build with -DVERSION='\"x.y.z\"'"
#endif

static const char *program_name(const char *argv0)
{
    const char *slash = strrchr(argv0, '/');
    return slash ? slash + 1 : argv0;
}

int main(int argc, char **argv)
{
    const char *name = program_name(argc > 0 ? argv[0] : "noderax-agent");

    if (argc > 1 && (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0)) {
        printf("%s %s\n", name, VERSION);
        return 0;
    }
    fprintf(stderr, "%s %s: this release is broken on purpose (noderax VM suite)\n", name, VERSION);
    return 1;
}

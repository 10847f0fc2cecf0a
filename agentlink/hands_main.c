/* hands_main.c - entry point of warmpool-hands (see hands_server.c). */
#include "agentlink/alink_int.h"

int main(int argc, char **argv)
{
    return alink__hands_main(argc, argv);
}

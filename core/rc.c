/* rc.c - messages and names of rc_t codes, and the core_err formatter. */
#include "core/rc.h"

#include <stdarg.h>
#include <stdio.h>

static const char *const rc_msgs[] = {
#define CORE_RC_MSG(name, lower, msg) msg,
    CORE_RC_MAP(CORE_RC_MSG)
#undef CORE_RC_MSG
};

static const char *const rc_names[] = {
#define CORE_RC_NAME(name, lower, msg) #lower,
    CORE_RC_MAP(CORE_RC_NAME)
#undef CORE_RC_NAME
};

const char *rc_str(rc_t rc)
{
    return (unsigned)rc < RC__COUNT ? rc_msgs[rc] : "unknown";
}

const char *rc_name(rc_t rc)
{
    return (unsigned)rc < RC__COUNT ? rc_names[rc] : "unknown";
}

rc_t core_err(core_err_t *err, rc_t rc, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return rc;
}

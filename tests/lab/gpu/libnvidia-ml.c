/*
 * A stand-in libnvidia-ml.so.1 for the inferops lab. The real nvidia-ml-py bindings load it unchanged.
 *
 * The GPUs come from a JSON state file (/etc/inferops-lab/gpus.json); the processes that use them from
 * claim files (one JSON file per process in /var/lib/inferops-lab/claims) written by the processes
 * themselves (the vLLM emulator, `inferops-lab occupy`). The claiming process holds an exclusive flock on
 * its file for as long as it lives, so the memory is freed when the process exits, however it dies, as with
 * the real driver, and that is visible from any PID namespace. A claim also names its PID namespace and its
 * PID there, so a claim made inside a container is reported with the host PID, as the real driver does.
 *
 * Inside a container started with --gpus, the lab's runtime hook mounts a visible-devices file: only those
 * GPUs are enumerated, renumbered from 0, with their real UUIDs.
 *
 * Return codes follow NVML: DRIVER_NOT_LOADED when the state says so, NOT_SUPPORTED for utilization on
 * MIG and for power and clocks on a MIG device handle, GPU_IS_LOST for a lost GPU, INSUFFICIENT_SIZE for short process buffers, and so on.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_min.h"

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

enum {
    NVML_TOPOLOGY_INTERNAL = 0,
    NVML_TOPOLOGY_SINGLE = 10,
    NVML_TOPOLOGY_MULTIPLE = 20,
    NVML_TOPOLOGY_HOSTBRIDGE = 30,
    NVML_TOPOLOGY_NODE = 40,
    NVML_TOPOLOGY_SYSTEM = 50,
};

#define MIB (1024ULL * 1024ULL)
#define MAX_GPUS 64
#define MAX_MIG 7
#define MAX_PROCS 256
#define NO_INSTANCE 0xFFFFFFFFu

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2 << 24)))

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

struct mig_dev;

struct gpu {
    int is_mig; /* always 0 here; shares its first field with struct mig_dev */
    unsigned index;
    char uuid[96], name[96], serial[32], pci_bus_id[32];
    unsigned long long total_mib, base_used_mib, stuck_mib;
    unsigned util_gpu, util_mem, temperature;
    int persistence, mig_mode, mig_pending, lost, mig_capable;
    unsigned long long ecc_uv, ecc_cv, ecc_ua, ecc_ca;
    unsigned power_usage_mw, power_limit_mw;
    unsigned long long clocks_event_reasons;
    int numa_node, host_bridge, pci_switch;
    unsigned pci_device_id;
    int n_mig;
    struct mig_dev *mig[MAX_MIG];
};

struct mig_dev {
    int is_mig; /* always 1 */
    struct gpu *parent;
    unsigned slot;
    char uuid[96], profile[32];
    unsigned long long total_mib;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int init_count;
static struct gpu gpus[MAX_GPUS];
static struct mig_dev migs[MAX_GPUS][MAX_MIG];
static int n_gpus;
static int driver_loaded = 1;
static char driver_version[32] = "535.247.01";
static int cuda_version = 12020;
static time_t state_mtime;
static long state_mtime_ns;

static const char *env_or(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

static const char *state_path(void) { return env_or("INFEROPS_LAB_STATE", "/etc/inferops-lab/gpus.json"); }
static const char *claims_dir(void) { return env_or("INFEROPS_LAB_CLAIMS", "/var/lib/inferops-lab/claims"); }
static const char *visible_path(void) { return env_or("INFEROPS_LAB_VISIBLE", "/run/inferops-lab/visible-devices"); }

static void copy_str(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

/* The UUIDs listed in the visible-devices file, or an empty list when every GPU is visible. */
static int read_visible(char visible[MAX_GPUS][96])
{
    char *text = json_read_file(visible_path());
    int n = 0;
    if (!text)
        return -1;
    for (char *tok = strtok(text, ", \n\t"); tok && n < MAX_GPUS; tok = strtok(NULL, ", \n\t"))
        copy_str(visible[n++], 96, tok);
    free(text);
    return n;
}

static int is_visible(const char *uuid, char visible[MAX_GPUS][96], int n_visible)
{
    if (n_visible < 0)
        return 1;
    for (int i = 0; i < n_visible; i++)
        if (strcmp(visible[i], uuid) == 0)
            return 1;
    return 0;
}

static void load_gpu(struct gpu *g, const struct jnode *j, unsigned index, int slot)
{
    memset(g, 0, sizeof(*g));
    g->index = index;
    copy_str(g->uuid, sizeof g->uuid, json_str(j, "uuid", ""));
    copy_str(g->name, sizeof g->name, json_str(j, "name", "NVIDIA H100 80GB HBM3"));
    copy_str(g->serial, sizeof g->serial, json_str(j, "serial", "1650000000000"));
    copy_str(g->pci_bus_id, sizeof g->pci_bus_id, json_str(j, "pci_bus_id", "00000000:00:00.0"));
    g->total_mib = (unsigned long long)json_num(j, "memory_total_mib", 81559);
    g->base_used_mib = (unsigned long long)json_num(j, "memory_used_mib", 0);
    g->stuck_mib = (unsigned long long)json_num(j, "memory_stuck_mib", 0);
    g->util_gpu = (unsigned)json_num(j, "utilization_gpu", 0);
    g->util_mem = (unsigned)json_num(j, "utilization_memory", 0);
    g->temperature = (unsigned)json_num(j, "temperature_c", 30);
    g->persistence = json_bool(j, "persistence_mode", 0);
    g->mig_capable = json_bool(j, "mig_capable", 1);
    g->mig_mode = json_bool(j, "mig_mode", 0);
    g->mig_pending = json_bool(j, "mig_mode_pending", g->mig_mode);
    g->lost = json_bool(j, "lost", 0);
    g->ecc_uv = (unsigned long long)json_num(j, "ecc_uncorrected_volatile", 0);
    g->ecc_cv = (unsigned long long)json_num(j, "ecc_corrected_volatile", 0);
    g->ecc_ua = (unsigned long long)json_num(j, "ecc_uncorrected_aggregate", (double)g->ecc_uv);
    g->ecc_ca = (unsigned long long)json_num(j, "ecc_corrected_aggregate", (double)g->ecc_cv);
    /* Watts in the state file, milliwatts in NVML's answers; 700 W is an H100 SXM's limit. */
    g->power_usage_mw = (unsigned)(json_num(j, "power_usage_w", 70) * 1000.0 + 0.5);
    g->power_limit_mw = (unsigned)(json_num(j, "power_limit_w", 700) * 1000.0 + 0.5);
    g->clocks_event_reasons = (unsigned long long)json_num(j, "clocks_event_reasons", 0);
    g->numa_node = (int)json_num(j, "numa_node", 0);
    g->host_bridge = (int)json_num(j, "host_bridge", g->numa_node);
    g->pci_switch = (int)json_num(j, "pci_switch", (double)index);
    g->pci_device_id = (unsigned)json_num(j, "pci_device_id", 0x233010DE);

    const struct jnode *mlist = json_get(j, "mig_devices");
    if (g->mig_mode && mlist && mlist->type == J_ARR) {
        for (const struct jnode *m = mlist->child; m && g->n_mig < MAX_MIG; m = m->next) {
            struct mig_dev *md = &migs[slot][g->n_mig];
            memset(md, 0, sizeof(*md));
            md->is_mig = 1;
            md->parent = g;
            md->slot = (unsigned)g->n_mig;
            copy_str(md->uuid, sizeof md->uuid, json_str(m, "uuid", ""));
            copy_str(md->profile, sizeof md->profile, json_str(m, "profile", "1g.10gb"));
            md->total_mib = (unsigned long long)json_num(m, "memory_total_mib", 9856);
            g->mig[g->n_mig++] = md;
        }
    }
}

/* Re-reads the state file when it changed. Called with the lock held. */
static nvmlReturn_t refresh(void)
{
    struct stat st;
    if (stat(state_path(), &st) != 0)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    if (n_gpus > 0 && st.st_mtime == state_mtime && st.st_mtim.tv_nsec == state_mtime_ns)
        return driver_loaded ? NVML_SUCCESS : NVML_ERROR_DRIVER_NOT_LOADED;

    char *text = json_read_file(state_path());
    struct jnode *root = text ? json_parse(text) : NULL;
    free(text);
    if (!root)
        return NVML_ERROR_UNKNOWN;

    driver_loaded = json_bool(root, "driver_loaded", 1);
    copy_str(driver_version, sizeof driver_version, json_str(root, "driver_version", "535.247.01"));
    cuda_version = (int)json_num(root, "cuda_driver_version", 12020);

    char visible[MAX_GPUS][96];
    int n_visible = read_visible(visible);
    const struct jnode *list = json_get(root, "gpus");
    n_gpus = 0;
    if (list && list->type == J_ARR)
        for (const struct jnode *j = list->child; j && n_gpus < MAX_GPUS; j = j->next)
            if (is_visible(json_str(j, "uuid", ""), visible, n_visible)) {
                load_gpu(&gpus[n_gpus], j, (unsigned)n_gpus, n_gpus);
                n_gpus++;
            }
    json_free(root);
    state_mtime = st.st_mtime;
    state_mtime_ns = st.st_mtim.tv_nsec;
    return driver_loaded ? NVML_SUCCESS : NVML_ERROR_DRIVER_NOT_LOADED;
}

/* ---- processes: claim files resolved to PIDs of this PID namespace ---- */

struct proc_use {
    unsigned pid; /* 0: alive, but in a PID namespace this process cannot see */
    unsigned long long used_mib;
    unsigned utilization;
};

static unsigned long long ns_inode(const char *proc_path)
{
    struct stat st;
    return stat(proc_path, &st) == 0 ? (unsigned long long)st.st_ino : 0;
}

/* Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot; 0 if it is gone. */
static unsigned long long start_time(unsigned long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%lu/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    if (!p)
        return 0;
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " "))
        if (++field == 22)
            return strtoull(tok, NULL, 10);
    return 0;
}

/* The PID, in our namespace, of the process that is `pid` inside the namespace `pidns` and started at
 * `started` (so that a recycled PID does not inherit a dead process's memory); 0 if gone or unseen. */
static unsigned resolve_pid(unsigned long long pidns, unsigned pid, unsigned long long started)
{
    if (pidns == ns_inode("/proc/self/ns/pid")) {
        unsigned long long actual = start_time(pid);
        return actual && (!started || actual == started) ? pid : 0;
    }
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    unsigned found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        char *end;
        unsigned long candidate = strtoul(e->d_name, &end, 10);
        if (*end || candidate == 0)
            continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%lu/ns/pid", candidate);
        if (ns_inode(path) != pidns)
            continue;
        snprintf(path, sizeof path, "/proc/%lu/status", candidate);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        char line[256];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "NSpid:", 6) != 0)
                continue;
            unsigned last = 0;
            for (char *tok = strtok(line + 6, " \t\n"); tok; tok = strtok(NULL, " \t\n"))
                last = (unsigned)strtoul(tok, NULL, 10);
            if (last == pid && (!started || start_time(candidate) == started))
                found = (unsigned)candidate;
            break;
        }
        fclose(f);
    }
    closedir(d);
    return found;
}

/* Every live claim on `uuid`. */
static int claims_for(const char *uuid, struct proc_use *out, int max)
{
    DIR *d = opendir(claims_dir());
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while (n < max && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", claims_dir(), e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
            /* Nobody holds the claim's lock: its process is gone, and so is its memory. */
            close(fd);
            continue;
        }
        close(fd);
        char *text = json_read_file(path);
        struct jnode *claim = text ? json_parse(text) : NULL;
        free(text);
        if (!claim)
            continue;
        const struct jnode *use = json_get(json_get(claim, "gpus"), uuid);
        if (use && use->type == J_NUM) {
            out[n].pid = resolve_pid((unsigned long long)json_num(claim, "pidns", 0),
                                     (unsigned)json_num(claim, "pid", 0),
                                     (unsigned long long)json_num(claim, "starttime", 0));
            out[n].used_mib = (unsigned long long)use->num;
            out[n].utilization = (unsigned)json_num(claim, "utilization", 0);
            n++;
        }
        json_free(claim);
    }
    closedir(d);
    return n;
}

/* ---- handles ---- */

static int is_mig_handle(const void *h) { return h && *(const int *)h == 1; }

static struct gpu *as_gpu(void *h)
{
    for (int i = 0; i < n_gpus; i++)
        if (h == &gpus[i])
            return &gpus[i];
    return NULL;
}

static struct mig_dev *as_mig(void *h)
{
    for (int i = 0; i < n_gpus; i++)
        for (int m = 0; m < gpus[i].n_mig; m++)
            if (h == gpus[i].mig[m])
                return gpus[i].mig[m];
    return NULL;
}

/* Takes the lock, refreshes the state and resolves a GPU handle. Unlocks and returns an error on failure. */
static nvmlReturn_t enter(void *h, struct gpu **g, struct mig_dev **m)
{
    pthread_mutex_lock(&lock);
    nvmlReturn_t r = init_count ? refresh() : NVML_ERROR_UNINITIALIZED;
    if (r == NVML_SUCCESS) {
        *g = NULL;
        if (m)
            *m = NULL;
        if (is_mig_handle(h)) {
            struct mig_dev *md = as_mig(h);
            if (!md || !m)
                r = md ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT;
            else {
                *m = md;
                *g = md->parent;
            }
        } else if (!(*g = as_gpu(h))) {
            r = NVML_ERROR_INVALID_ARGUMENT;
        }
        if (r == NVML_SUCCESS && (*g)->lost)
            r = NVML_ERROR_GPU_IS_LOST;
    }
    if (r != NVML_SUCCESS)
        pthread_mutex_unlock(&lock);
    return r;
}

static nvmlReturn_t leave(nvmlReturn_t r)
{
    pthread_mutex_unlock(&lock);
    return r;
}

static nvmlReturn_t put_string(char *buf, unsigned length, const char *value)
{
    if (!buf)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

/* ---- init / system ---- */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    pthread_mutex_lock(&lock);
    n_gpus = 0; /* force a re-read */
    nvmlReturn_t r = refresh();
    if (r == NVML_SUCCESS)
        init_count++;
    pthread_mutex_unlock(&lock);
    return r;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&lock);
    nvmlReturn_t r = init_count ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    if (init_count)
        init_count--;
    pthread_mutex_unlock(&lock);
    return r;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t enter_system(void)
{
    pthread_mutex_lock(&lock);
    nvmlReturn_t r = init_count ? refresh() : NVML_ERROR_UNINITIALIZED;
    if (r != NVML_SUCCESS)
        pthread_mutex_unlock(&lock);
    return r;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t r = enter_system();
    return r != NVML_SUCCESS ? r : leave(put_string(version, length, driver_version));
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    nvmlReturn_t r = enter_system();
    if (r != NVML_SUCCESS)
        return r;
    char nvml[48];
    snprintf(nvml, sizeof nvml, "12.%s", driver_version);
    return leave(put_string(version, length, nvml));
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
    nvmlReturn_t r = enter_system();
    if (r != NVML_SUCCESS)
        return r;
    if (!version)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *version = cuda_version;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) { return nvmlSystemGetCudaDriverVersion(version); }

/* ---- enumeration ---- */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    nvmlReturn_t r = enter_system();
    if (r != NVML_SUCCESS)
        return r;
    if (!count)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned)n_gpus;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device)
{
    nvmlReturn_t r = enter_system();
    if (r != NVML_SUCCESS)
        return r;
    if (!device || index >= (unsigned)n_gpus)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *device = &gpus[index];
    return leave(gpus[index].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, void **device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, void **device)
{
    nvmlReturn_t r = enter_system();
    if (r != NVML_SUCCESS)
        return r;
    if (!uuid || !device)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < n_gpus; i++) {
        if (strcmp(gpus[i].uuid, uuid) == 0) {
            *device = &gpus[i];
            return leave(NVML_SUCCESS);
        }
        for (int m = 0; m < gpus[i].n_mig; m++)
            if (strcmp(gpus[i].mig[m]->uuid, uuid) == 0) {
                *device = gpus[i].mig[m];
                return leave(NVML_SUCCESS);
            }
    }
    return leave(NVML_ERROR_NOT_FOUND);
}

nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, void **device)
{
    nvmlReturn_t r = enter_system();
    if (r != NVML_SUCCESS)
        return r;
    if (!bus_id || !device)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < n_gpus; i++)
        if (strcasecmp(gpus[i].pci_bus_id, bus_id) == 0) {
            *device = &gpus[i];
            return leave(NVML_SUCCESS);
        }
    return leave(NVML_ERROR_NOT_FOUND);
}

nvmlReturn_t nvmlDeviceGetIndex(void *device, unsigned int *index)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!index)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *index = g->index;
    return leave(NVML_SUCCESS);
}

/* ---- identity ---- */

nvmlReturn_t nvmlDeviceGetName(void *device, char *name, unsigned int length)
{
    struct gpu *g;
    struct mig_dev *m;
    nvmlReturn_t r = enter(device, &g, &m);
    if (r != NVML_SUCCESS)
        return r;
    if (!m)
        return leave(put_string(name, length, g->name));
    char full[160];
    snprintf(full, sizeof full, "%s MIG %s", g->name, m->profile);
    return leave(put_string(name, length, full));
}

nvmlReturn_t nvmlDeviceGetUUID(void *device, char *uuid, unsigned int length)
{
    struct gpu *g;
    struct mig_dev *m;
    nvmlReturn_t r = enter(device, &g, &m);
    return r != NVML_SUCCESS ? r : leave(put_string(uuid, length, m ? m->uuid : g->uuid));
}

nvmlReturn_t nvmlDeviceGetSerial(void *device, char *serial, unsigned int length)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    return r != NVML_SUCCESS ? r : leave(put_string(serial, length, g->serial));
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(void *device, nvmlPciInfo_t *pci)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!pci)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof(*pci));
    unsigned domain = 0, bus = 0, dev = 0, fn = 0;
    sscanf(g->pci_bus_id, "%x:%x:%x.%x", &domain, &bus, &dev, &fn);
    pci->domain = domain;
    pci->bus = bus;
    pci->device = dev;
    pci->pciDeviceId = g->pci_device_id;
    pci->pciSubSystemId = 0x16C110DE;
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.%X", domain & 0xffff, bus, dev, fn);
    copy_str(pci->busId, sizeof pci->busId, g->pci_bus_id);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v2(void *device, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(device, pci); }
nvmlReturn_t nvmlDeviceGetPciInfo(void *device, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(device, pci); }

/* ---- memory, utilization, temperature ---- */

static unsigned long long mig_used_mib(struct mig_dev *m)
{
    struct proc_use procs[MAX_PROCS];
    unsigned long long used = 0;
    int n = claims_for(m->uuid, procs, MAX_PROCS);
    for (int i = 0; i < n; i++)
        used += procs[i].used_mib;
    return used;
}

static unsigned long long gpu_used_mib(struct gpu *g)
{
    struct proc_use procs[MAX_PROCS];
    unsigned long long used = g->base_used_mib + g->stuck_mib;
    int n = claims_for(g->uuid, procs, MAX_PROCS);
    for (int i = 0; i < n; i++)
        used += procs[i].used_mib;
    for (int m = 0; m < g->n_mig; m++)
        used += mig_used_mib(g->mig[m]);
    return used;
}

static void memory_of(struct gpu *g, struct mig_dev *m, unsigned long long *total, unsigned long long *used)
{
    *total = (m ? m->total_mib : g->total_mib) * MIB;
    *used = (m ? mig_used_mib(m) : gpu_used_mib(g)) * MIB;
    if (*used > *total)
        *used = *total;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(void *device, nvmlMemory_t *memory)
{
    struct gpu *g;
    struct mig_dev *m;
    nvmlReturn_t r = enter(device, &g, &m);
    if (r != NVML_SUCCESS)
        return r;
    if (!memory)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    memory_of(g, m, &memory->total, &memory->used);
    memory->free = memory->total - memory->used;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void *device, nvmlMemory_v2_t *memory)
{
    struct gpu *g;
    struct mig_dev *m;
    nvmlReturn_t r = enter(device, &g, &m);
    if (r != NVML_SUCCESS)
        return r;
    if (!memory)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != nvmlMemory_v2)
        return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    memory_of(g, m, &memory->total, &memory->used);
    memory->reserved = m ? 0 : 512 * MIB;
    if (memory->used + memory->reserved > memory->total)
        memory->reserved = memory->total - memory->used;
    memory->free = memory->total - memory->used - memory->reserved;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(void *device, nvmlUtilization_t *utilization)
{
    struct gpu *g;
    struct mig_dev *m;
    nvmlReturn_t r = enter(device, &g, &m);
    if (r != NVML_SUCCESS)
        return r;
    if (m || g->mig_mode)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    if (!utilization)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    struct proc_use procs[MAX_PROCS];
    unsigned gpu_util = g->util_gpu;
    int n = claims_for(g->uuid, procs, MAX_PROCS);
    for (int i = 0; i < n; i++)
        gpu_util += procs[i].utilization;
    utilization->gpu = gpu_util > 100 ? 100 : gpu_util;
    utilization->memory = g->util_mem > 100 ? 100 : g->util_mem;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTemperature(void *device, int sensor, unsigned int *temp)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (sensor != 0 || !temp)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *temp = g->temperature;
    return leave(NVML_SUCCESS);
}

/* ---- processes ---- */

static nvmlReturn_t running_processes(void *device, unsigned int *count, nvmlProcessInfo_t *infos)
{
    struct gpu *g;
    struct mig_dev *m;
    nvmlReturn_t r = enter(device, &g, &m);
    if (r != NVML_SUCCESS)
        return r;
    if (!count)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    struct proc_use procs[MAX_PROCS];
    int n = 0;
    if (m) {
        n = claims_for(m->uuid, procs, MAX_PROCS);
    } else {
        n = claims_for(g->uuid, procs, MAX_PROCS);
        for (int k = 0; k < g->n_mig && n < MAX_PROCS; k++)
            n += claims_for(g->mig[k]->uuid, procs + n, MAX_PROCS - n);
    }
    /* Processes of PID namespaces we cannot see still use memory, but are not listed (as in containers). */
    int listed = 0;
    for (int i = 0; i < n; i++)
        if (procs[i].pid)
            procs[listed++] = procs[i];
    if (!infos || *count < (unsigned)listed) {
        *count = (unsigned)listed;
        return leave(listed == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (int i = 0; i < listed; i++) {
        infos[i].pid = procs[i].pid;
        infos[i].usedGpuMemory = procs[i].used_mib * MIB;
        infos[i].gpuInstanceId = m ? m->slot : NO_INSTANCE;
        infos[i].computeInstanceId = m ? 0 : NO_INSTANCE;
    }
    *count = (unsigned)listed;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(void *d, unsigned int *c, nvmlProcessInfo_t *i)
{
    return running_processes(d, c, i);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(void *d, unsigned int *c, nvmlProcessInfo_t *i)
{
    return running_processes(d, c, i);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(void *d, unsigned int *c, nvmlProcessInfo_t *i)
{
    return running_processes(d, c, i);
}

/* The lab has no graphics workloads. */
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(void *device, unsigned int *count, nvmlProcessInfo_t *infos)
{
    struct gpu *g;
    (void)infos;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!count)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = 0;
    return leave(NVML_SUCCESS);
}

/* ---- health and modes ---- */

nvmlReturn_t nvmlDeviceGetTotalEccErrors(void *device, int error_type, int counter_type, unsigned long long *count)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!count || error_type < 0 || error_type > 1 || counter_type < 0 || counter_type > 1)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (error_type == 1)
        *count = counter_type == 0 ? g->ecc_uv : g->ecc_ua;
    else
        *count = counter_type == 0 ? g->ecc_cv : g->ecc_ca;
    return leave(NVML_SUCCESS);
}

/* ---- power and clocks (a MIG device handle gets NOT_SUPPORTED from enter(), as from the real library) ---- */

/* Milliwatts. */
nvmlReturn_t nvmlDeviceGetPowerUsage(void *device, unsigned int *power)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!power)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *power = g->power_usage_mw;
    return leave(NVML_SUCCESS);
}

/* Milliwatts. */
nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(void *device, unsigned int *limit)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!limit)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *limit = g->power_limit_mw;
    return leave(NVML_SUCCESS);
}

/* A bitmask of nvmlClocksEventReason* (r535 renamed them from nvmlClocksThrottleReason*; same bits). */
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(void *device, unsigned long long *reasons)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!reasons)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *reasons = g->clocks_event_reasons;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(void *device, unsigned long long *reasons)
{
    return nvmlDeviceGetCurrentClocksEventReasons(device, reasons);
}

nvmlReturn_t nvmlDeviceGetPersistenceMode(void *device, int *mode)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!mode)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *mode = g->persistence;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMigMode(void *device, unsigned int *current, unsigned int *pending)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!g->mig_capable)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    if (!current || !pending)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *current = (unsigned)g->mig_mode;
    *pending = (unsigned)g->mig_pending;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(void *device, unsigned int *is_mig)
{
    struct gpu *g;
    struct mig_dev *m;
    nvmlReturn_t r = enter(device, &g, &m);
    if (r != NVML_SUCCESS)
        return r;
    if (!is_mig)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *is_mig = m ? 1 : 0;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(void *device, unsigned int *count)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!g->mig_capable)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    if (!count)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = g->mig_mode ? MAX_MIG : 0;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(void *device, unsigned int index, void **mig_device)
{
    struct gpu *g;
    nvmlReturn_t r = enter(device, &g, NULL);
    if (r != NVML_SUCCESS)
        return r;
    if (!g->mig_mode)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    if (!mig_device || index >= MAX_MIG)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (index >= (unsigned)g->n_mig)
        return leave(NVML_ERROR_NOT_FOUND);
    *mig_device = g->mig[index];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(void *mig_device, void **device)
{
    struct gpu *g;
    struct mig_dev *m;
    nvmlReturn_t r = enter(mig_device, &g, &m);
    if (r != NVML_SUCCESS)
        return r;
    if (!m || !device)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *device = g;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(void *device1, void *device2, int *level)
{
    struct gpu *a, *b;
    nvmlReturn_t r = enter(device1, &a, NULL);
    if (r != NVML_SUCCESS)
        return r;
    b = as_gpu(device2);
    if (!b || !level)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (a == b)
        *level = NVML_TOPOLOGY_INTERNAL;
    else if (a->pci_switch == b->pci_switch)
        *level = NVML_TOPOLOGY_SINGLE;
    else if (a->host_bridge == b->host_bridge)
        *level = NVML_TOPOLOGY_HOSTBRIDGE;
    else if (a->numa_node == b->numa_node)
        *level = NVML_TOPOLOGY_NODE;
    else
        *level = NVML_TOPOLOGY_SYSTEM;
    return leave(NVML_SUCCESS);
}

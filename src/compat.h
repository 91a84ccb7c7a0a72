/*
 * compat.h — every PostgreSQL version difference in one place.
 * loyalty targets PostgreSQL 15; the Makefile refuses other majors.
 */
#ifndef LOYALTY_COMPAT_H
#define LOYALTY_COMPAT_H

#include "postgres.h"

#endif
